"""The contract documents are valid documents of their specifications:
docs/openapi.yaml against the OpenAPI 3.1 schema (as schemathesis ships
it), docs/asyncapi.yaml against the AsyncAPI 3.0.0 schema (the pinned npm
package @asyncapi/specs), docs/webhooks.schema.json against the JSON Schema
2020-12 meta-schema (bundled with jsonschema_rs). Run by `make contract`
with the venv's Python.
"""

import json
import pathlib
import sys

import jsonschema_rs
import yaml
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

ROOT = pathlib.Path(__file__).resolve().parents[2]
ASYNCAPI_SCHEMA = ROOT / "node_modules/@asyncapi/specs/schemas/3.0.0-without-$id.json"
# The webhook request body's schema; the e2e suite checks every body against it.
WEBHOOKS = "webhooks.schema.json"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


def load(name: str):
    return yaml.safe_load((ROOT / "docs" / name).read_text())


def problems(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, e.instance_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(document)]


def main() -> int:
    failed = False
    openapi = load("openapi.yaml")
    if openapi.get("openapi") != "3.1.0":
        print("docs/openapi.yaml: not OpenAPI 3.1.0")
        failed = True
    asyncapi = load("asyncapi.yaml")
    if asyncapi.get("asyncapi") != "3.0.0":
        print("docs/asyncapi.yaml: not AsyncAPI 3.0.0")
        failed = True
    async_validator = jsonschema_rs.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))
    for name, validator, document in [
        ("openapi.yaml", OPENAPI_31_VALIDATOR, openapi),
        ("asyncapi.yaml", async_validator, asyncapi),
    ]:
        found = problems(validator, document)
        for problem in found[:20]:
            print(f"docs/{name}: {problem}")
        failed |= bool(found)
    webhooks = json.loads((ROOT / "docs" / WEBHOOKS).read_text())
    if webhooks.get("$schema") != DRAFT_2020_12:
        print(f"docs/{WEBHOOKS}: not a JSON Schema 2020-12 document ($schema)")
        failed = True
    else:
        try:
            jsonschema_rs.meta.validate(webhooks)
        except jsonschema_rs.ValidationError as error:
            print(f"docs/{WEBHOOKS}: {error}")
            failed = True
    if not failed:
        print(
            "docs/openapi.yaml is valid OpenAPI 3.1, docs/asyncapi.yaml valid AsyncAPI 3.0, "
            f"docs/{WEBHOOKS} valid JSON Schema 2020-12"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
