"""Checks a JSON document against a schema of an OpenAPI document.

python validate_json.py OPENAPI.json SCHEMA_NAME < document.json

Prints each violation with its path and exits 1, or exits 0 when the document is valid.
"""

import json
import sys

from jsonschema import Draft202012Validator

if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as file:
        openapi = json.load(file)
    # The schema's references point into the document's components, as OpenAPI 3.1 says.
    schema = {"$ref": f"#/components/schemas/{sys.argv[2]}", "components": openapi["components"]}
    Draft202012Validator.check_schema(schema)
    document = json.load(sys.stdin)
    errors = sorted(Draft202012Validator(schema).iter_errors(document), key=lambda e: list(e.path))
    for error in errors:
        path = "/".join(str(part) for part in error.absolute_path) or "(the document)"
        print(f"{path}: {error.message}")
    sys.exit(1 if errors else 0)
