"""Signatures checked by the reference verifiers receivers actually use, not by our own code."""

from __future__ import annotations

import base64
import json
import time
import traceback
from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks.webhooks
import svix.webhooks

from dispatcher.config import Secret
from dispatcher.signing import decode_secret, generate_secret, sign

NOW = datetime(2030, 1, 1, tzinfo=UTC)
BODY = json.dumps({"id": "evt_1", "type": "order.created", "data": {"order_id": 42}}).encode()
MSG_ID = "evt_1"


def _secret(text: str, expires_at: datetime | None = None) -> Secret:
    return Secret(key=decode_secret(text), expires_at=expires_at)


def _std_headers(signature: str, timestamp: int) -> dict[str, str]:
    return {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def _svix_headers(signature: str, timestamp: int) -> dict[str, str]:
    return {"svix-id": MSG_ID, "svix-timestamp": str(timestamp), "svix-signature": signature}


def _signed_now(secrets: list[Secret], body: bytes = BODY) -> tuple[str, int]:
    # Both verifiers refuse a timestamp more than five minutes from their own clock.
    timestamp = int(time.time())
    signature = sign(secrets, MSG_ID, timestamp, body, NOW)
    assert signature is not None
    return signature, timestamp


def _verify_with_both(secret_text: str, body: bytes, signature: str, timestamp: int) -> None:
    standardwebhooks.webhooks.Webhook(secret_text).verify(body, _std_headers(signature, timestamp))
    svix.webhooks.Webhook(secret_text).verify(body, _svix_headers(signature, timestamp))


def test_one_secret_verifies_with_standardwebhooks_and_svix() -> None:
    text = generate_secret()
    signature, timestamp = _signed_now([_secret(text)])

    assert signature.startswith("v1,")
    assert " " not in signature
    _verify_with_both(text, BODY, signature, timestamp)


def test_signature_equals_reference_library_for_a_fixed_timestamp() -> None:
    text = generate_secret()
    timestamp = 1_700_000_000
    expected = standardwebhooks.webhooks.Webhook(text).sign(
        MSG_ID, datetime.fromtimestamp(timestamp, UTC), BODY.decode()
    )

    assert sign([_secret(text)], MSG_ID, timestamp, BODY, NOW) == expected


def test_each_rotated_secret_alone_verifies_the_combined_header() -> None:
    texts = [generate_secret(), generate_secret(48), generate_secret(24)]
    signature, timestamp = _signed_now([_secret(t) for t in texts])

    assert len(signature.split(" ")) == 3
    for text in texts:
        _verify_with_both(text, BODY, signature, timestamp)


def test_an_unrelated_secret_does_not_verify_the_rotation_header() -> None:
    signature, timestamp = _signed_now([_secret(generate_secret()), _secret(generate_secret())])

    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        _verify_with_both(generate_secret(), BODY, signature, timestamp)


def test_tampered_body_is_rejected_by_both_verifiers() -> None:
    text = generate_secret()
    signature, timestamp = _signed_now([_secret(text)])
    tampered = BODY.replace(b"42", b"43")

    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.webhooks.Webhook(text).verify(tampered, _std_headers(signature, timestamp))
    with pytest.raises(svix.webhooks.WebhookVerificationError):
        svix.webhooks.Webhook(text).verify(tampered, _svix_headers(signature, timestamp))


def test_expired_secret_does_not_sign_and_the_active_one_still_does() -> None:
    expired_text, active_text = generate_secret(), generate_secret()
    secrets = [_secret(expired_text, NOW - timedelta(seconds=1)), _secret(active_text)]
    signature, timestamp = _signed_now(secrets)

    assert len(signature.split(" ")) == 1
    _verify_with_both(active_text, BODY, signature, timestamp)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        _verify_with_both(expired_text, BODY, signature, timestamp)


def test_secret_stops_signing_at_the_instant_it_expires() -> None:
    before = _secret(generate_secret(), NOW + timedelta(microseconds=1))
    at = _secret(generate_secret(), NOW)

    assert sign([before], MSG_ID, 1, BODY, NOW) is not None
    assert sign([at], MSG_ID, 1, BODY, NOW) is None


def test_no_secret_means_no_signature() -> None:
    assert sign([], MSG_ID, 1, BODY, NOW) is None


def test_message_id_with_a_full_stop_is_refused() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        sign([_secret(generate_secret())], "evt.1", 1, BODY, NOW)


def test_generated_secret_decodes_to_32_bytes_and_both_libraries_accept_it() -> None:
    text = generate_secret()

    assert text.startswith("whsec_")
    assert len(decode_secret(text)) == 32
    signature, timestamp = _signed_now([_secret(text)])
    _verify_with_both(text, BODY, signature, timestamp)


@pytest.mark.parametrize("nbytes", [23, 65])
def test_generate_secret_refuses_sizes_outside_the_specification(nbytes: int) -> None:
    with pytest.raises(ValueError, match="24 to 64 bytes"):
        generate_secret(nbytes)


def test_decode_secret_accepts_base64_without_padding() -> None:
    text = generate_secret(31)  # 31 bytes encode to base64 ending in "="

    assert decode_secret(text.rstrip("=")) == decode_secret(text)


# A recognisable key, so the test can tell whether any part of its text leaked into an error.
LEAKY_B64 = base64.b64encode(b"this-key-must-never-leak!").decode()  # 25 bytes
LEAKY = "whsec_" + LEAKY_B64


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (LEAKY_B64, "does not start with 'whsec_'"),
        (LEAKY + "!", "not standard base64"),
        (LEAKY + "-_", "not standard base64"),
        (LEAKY + "A", "not standard base64"),
        ("whsec_" + base64.b64encode(b"k" * 23).decode(), "decodes to 23 bytes"),
        ("whsec_" + base64.b64encode(b"k" * 65).decode(), "decodes to 65 bytes"),
        ("whsec_", "decodes to 0 bytes"),
    ],
)
def test_decode_secret_names_the_problem_without_quoting_the_secret(
    text: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        decode_secret(text)

    printed = "".join(traceback.format_exception(caught.value))
    assert LEAKY_B64[:12] not in printed
    assert "a2tr" not in printed  # base64 of "kkk"
