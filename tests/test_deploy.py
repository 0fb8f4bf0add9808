"""deploy/cloudformation/recsys.yaml: cfn-lint finds nothing in it, and it makes the table recsys
writes (the key schema read from recsys/io/dynamodb.py), the lake bucket and least-privilege policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint_all, lint_file
from cfnlint.decode import decode

from recsys.config import Settings
from recsys.io import dynamodb

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / dynamodb.CLOUDFORMATION_TEMPLATE


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    parsed, matches = decode(str(TEMPLATE))  # tolerates the short forms !Ref, !GetAtt, !Sub
    assert not matches and parsed is not None, matches
    return parsed


def resource(template: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [r for r in template["Resources"].values() if r["Type"] == kind]
    assert len(found) == 1, kind
    return found[0]


def statements(template: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return list(template["Resources"][name]["Properties"]["PolicyDocument"]["Statement"])


def test_cfn_lint_finds_no_error_or_warning() -> None:
    matches = lint_file(TEMPLATE)
    assert not matches, "\n".join(str(m) for m in matches)


def test_cfn_lint_would_catch_a_broken_template() -> None:
    broken = TEMPLATE.read_text().replace("BillingMode: PAY_PER_REQUEST", "BillingMode: ON_DEMAND")
    assert any("ON_DEMAND" in str(m) for m in lint_all(broken))


def test_the_table_is_the_one_the_publisher_creates(template: dict[str, Any]) -> None:
    table = resource(template, "AWS::DynamoDB::Table")
    properties = table["Properties"]
    assert properties["KeySchema"] == dynamodb.KEY_SCHEMA
    assert properties["AttributeDefinitions"] == dynamodb.ATTRIBUTE_DEFINITIONS
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["TimeToLiveSpecification"] == {"AttributeName": dynamodb.TTL_ATTRIBUTE, "Enabled": True}
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["DeletionProtectionEnabled"] is True
    assert properties["SSESpecification"]["SSEEnabled"] is True
    assert not properties.get("GlobalSecondaryIndexes") and not properties.get("LocalSecondaryIndexes")
    assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"
    assert properties["TableName"] == {"Ref": "TableName"}
    assert template["Parameters"]["TableName"]["Default"] == Settings.model_fields["table"].default


def test_the_bucket_is_private_encrypted_unversioned_and_aborts_stale_uploads(template: dict[str, Any]) -> None:
    properties = resource(template, "AWS::S3::Bucket")["Properties"]
    assert properties["BucketName"] == {"Ref": "BucketName"}
    assert "VersioningConfiguration" not in properties
    assert set(properties["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(properties["PublicAccessBlockConfiguration"]) == 4
    rule = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    aborts = [r for r in properties["LifecycleConfiguration"]["Rules"] if "AbortIncompleteMultipartUpload" in r]
    assert aborts and aborts[0]["Status"] == "Enabled"
    assert aborts[0]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1


def test_the_worker_policy_allows_exactly_what_the_workers_call_on_exactly_the_table_and_bucket(
    template: dict[str, Any],
) -> None:
    table_arn = {"Fn::GetAtt": ["ServingTable", "Arn"]}
    granted = {(action, str(s["Resource"])) for s in statements(template, "WorkerPolicy") for action in s["Action"]}
    assert all(s["Effect"] == "Allow" for s in statements(template, "WorkerPolicy"))
    assert granted == {
        *((f"dynamodb:{a}", str(table_arn)) for a in (
            "DescribeTable", "DescribeTimeToLive", "BatchWriteItem", "PutItem", "GetItem", "BatchGetItem")),
        ("s3:ListBucket", str({"Fn::GetAtt": ["LakeBucket", "Arn"]})),
        *((f"s3:{a}", str({"Fn::Sub": "${LakeBucket.Arn}/*"})) for a in ("GetObject", "PutObject", "DeleteObject")),
    }


def test_the_storefront_policy_is_get_item_on_the_table_only(template: dict[str, Any]) -> None:
    (statement,) = statements(template, "StorefrontPolicy")
    assert statement["Effect"] == "Allow" and list(statement["Action"]) == ["dynamodb:GetItem"]
    assert statement["Resource"] == {"Fn::GetAtt": ["ServingTable", "Arn"]}


def test_outputs_name_what_recsys_and_the_roles_need(template: dict[str, Any]) -> None:
    assert {"TableName", "TableArn", "BucketName", "BucketArn", "WorkerPolicyArn", "StorefrontPolicyArn"} <= set(
        template["Outputs"]
    )
