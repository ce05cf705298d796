# The same commands the README shows.
.PHONY: setup run test lint format bench crds helm e2e

setup:
	./scripts/setup.sh

run:
	./scripts/run.sh

test:
	./scripts/test.sh

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format:
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

bench:
	.venv/bin/python benchmarks/throughput.py

# The chart carries a copy of the CRD (Helm installs CRDs from a chart's crds/).
crds:
	cp crds/inferencemodel.yaml charts/fleetlm/crds/inferencemodel.yaml

helm:
	./scripts/install_helm.sh
	.tools/bin/helm lint --strict charts/fleetlm

# Against the cluster of $KUBECONFIG (skipped when none is reachable).
e2e:
	.venv/bin/python -m pytest e2e
