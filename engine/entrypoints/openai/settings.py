"""Server settings, validated at start (environment variables FLEETLM_*, or the CLI)."""

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetlm.engine.core.kv_events import DEFAULT_KEY_PREFIX, check_key_prefix


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETLM_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = None
    served_model_name: str | None = None  # default: the model's directory name
    max_waiting_requests: int = Field(256, ge=0)  # beyond the running batch; then 429
    max_n: int = Field(16, ge=1)
    max_tokens_limit: int | None = Field(None, ge=1)  # per request; default: max_model_len
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(32, ge=4)
    drain_timeout_s: float = Field(30.0, ge=0)
    engine_ready_timeout_s: float = Field(900.0, gt=0)
    retry_after_s: int = Field(1, ge=1)
    log_level: str = "info"
    # A chat template sent with a request runs in a sandbox but unbounded in CPU and memory:
    # refused unless the operator trusts the callers (as vLLM's --trust-request-chat-template).
    trust_request_chat_template: bool = False
    # Register in this Redis's replica registry for routers to discover (`--discover redis`).
    register_redis_url: str | None = None
    advertise_url: str | None = None  # how routers reach this server (its registry entry)
    redis_key_prefix: str = DEFAULT_KEY_PREFIX  # of the registry key (one per model sharing it)

    @field_validator("redis_key_prefix")
    @classmethod
    def _check_key_prefix(cls, value: str) -> str:
        return check_key_prefix(value)
