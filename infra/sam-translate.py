"""Translates the SAM template into the plain CloudFormation that CloudFormation deploys.

    python sam-translate.py TEMPLATE OUT.json

Offline: the SAM translator (aws-sam-translator, pinned in tools-requirements.txt) without the
SAM CLI. Local CodeUri folders become a placeholder S3 location, as `sam validate` does, since
the translator only accepts S3 code locations. infra/validate.sh lints the output with cfn-lint
and checkov: some properties (such as an SQS event's BatchSize) are only checked there, on the
resources SAM generates.
"""

import json
import sys

import yaml
from samtranslator.translator.transform import transform


class NoManagedPolicies:
    """The template names no AWS managed policy, so nothing needs looking up in IAM."""

    def load(self):
        return {}


def main():
    src, out = sys.argv[1], sys.argv[2]
    with open(src) as f:
        template = yaml.safe_load(f)
    for name, resource in template.get("Resources", {}).items():
        props = resource.get("Properties") or {}
        if resource.get("Type") == "AWS::Serverless::Function" and isinstance(props.get("CodeUri"), str):
            if not props["CodeUri"].startswith("s3://"):
                props["CodeUri"] = f"s3://sam-translate-placeholder/{name}.zip"
    translated = transform(template, {}, NoManagedPolicies())
    with open(out, "w") as f:
        json.dump(translated, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
