"""The production-like stack shared by the bad-input and security tests.

It runs `environments/production.yaml` itself (API keys required, cache and budgets in Redis,
failClosed, Azure OpenAI and Bedrock enabled) on top of the test base (which adds the `echo`
model), against a password-protected Redis and the local Azure and Bedrock stand-ins. Every
credential is a sentinel, a unique string the security tests look for in logs and answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.fakes.bedrock import FakeBedrock
from tests.integration.reliability.support import FaultyAzure
from tests.support.redis_server import RedisServer
from tests.support.stack import RunningStack, running_stack

ROOT = Path(__file__).resolve().parents[3]
KEYS = {"alice": ("acme", "alice"), "bob": ("globex", "bob"), "carol": ("acme", "carol")}


def aws_isolation(directory: Path) -> dict[str, str]:
    """AWS settings that keep the developer's ~/.aws out of a stack with Bedrock enabled.

    Names a profile that exists and holds no credentials, so only the credentials these tests put
    in the environment (if any) are used.
    """
    config = directory / "aws-config"
    config.write_text("[default]\nregion = us-east-1\n")
    return {"AWS_PROFILE": "default", "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(directory / "no-aws-credentials")}


def environment(name: str) -> dict:
    return yaml.safe_load((ROOT / "environments" / f"{name}.yaml").read_text())


@dataclass
class Production:
    stack: RunningStack
    azure: FaultyAzure
    bedrock: FakeBedrock
    redis: RedisServer
    secrets: dict[str, str]  # what each sentinel is -> its value (API keys included)

    def protect_redis(self) -> None:
        """(Re)set the Redis password: a restarted redis-server forgets it."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.redis.port)
        try:
            client.config_set("requirepass", self.secrets["redis password"])
        finally:
            client.close()


@pytest.fixture(scope="session")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    tag = uuid.uuid4().hex[:12]
    secrets = {
        "azure api key": f"SENTINEL-azure-key-{tag}",
        "aws access key id": f"AKIDSENTINEL{tag.upper()}",
        "aws secret access key": f"SENTINEL-aws-secret-{tag}",
        "redis password": f"SENTINEL-redis-pw-{tag}",
    }
    directory = tmp_path_factory.mktemp("production")
    redis_server = RedisServer(directory / "redis").start()
    try:
        azure_fake = FaultyAzure.for_environment(environment("production"), api_key=secrets["azure api key"])
        with azure_fake as azure, \
                FakeBedrock(access_key=secrets["aws access key id"],
                            secret_key=secrets["aws secret access key"]) as bedrock:
            env = {
                "AZURE_OPENAI_ENDPOINT": azure.url,
                "AZURE_OPENAI_API_KEY": secrets["azure api key"],
                "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock.url,
                "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": secrets["aws access key id"],
                "AWS_SECRET_ACCESS_KEY": secrets["aws secret access key"],
                **aws_isolation(directory),
                "QLENS_REDIS_URL": f"redis://:{secrets['redis password']}@127.0.0.1:{redis_server.port}/0",
            }
            prod = Production(None, azure, bedrock, redis_server, secrets)  # type: ignore[arg-type]
            prod.protect_redis()
            with running_stack(directory / "stack", environment("production"), extra_env=env,
                               keys=KEYS) as stack:
                prod.stack = stack
                prod.secrets.update({f"API key of {name}": key for name, key in stack.keys.items()})
                yield prod
    finally:
        redis_server.stop()
