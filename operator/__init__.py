"""The Kubernetes operator: InferenceModel resources into engine workloads, a router and
Services (docs/operator.md). It never imports torch: it ships in a small image."""
