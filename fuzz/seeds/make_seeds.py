#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/seeds/<target>/ (run from anywhere).

Each seed is a real input in the target's input format (see the header of each
fuzz/fuzz_targets/<target>.rs): a selector byte, then fields split at 0xFF.
"""
import base64
import hashlib
import json
import os
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEP = b"\xff"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def write(target: str, name: str, data: bytes) -> None:
    folder = HERE / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def policy(path: str) -> bytes:
    return (ROOT / "policies" / path).read_bytes()


# phone_number: region index (fuzz_common::REGIONS: US GB FR DE BR IN AU CA MX JP IT CN AR ID GA RU)
for name, region, text in [
    ("us-parens", 0, "(415) 555-0123"),
    ("us-dots", 0, "415.555.0123"),
    ("us-international", 0, "+1 415 555 0123"),
    ("us-eleven-digits", 0, "14155550123"),
    ("us-idd-france", 0, "011 33 1 42 68 53 00"),
    ("gb-national", 1, "020 7946 0000"),
    ("gb-mobile-international", 0, "+44 7911 123456"),
    ("fr-national", 2, "01 42 68 53 00"),
    ("de-national", 3, "030 123456"),
    ("br-mobile", 4, "(11) 91234-5678"),
    ("in-mobile", 5, "098765 43210"),
    ("au-mobile", 6, "0412 345 678"),
    ("it-leading-zero", 10, "06 6982 1234"),
    ("short-code", 0, "12345"),
    ("alphanumeric", 0, "ACME Corp"),
]:
    write("phone_number", name, bytes([region]) + text.encode())

# jwt_verify
dev_header = json.dumps({"alg": "EdDSA", "typ": "JWT", "kid": "dev"}).encode()
dev_claims = json.dumps({
    "iss": "consentry-dev", "aud": "consentry", "sub": "alice", "tenant": "demo",
    "scope": "messages:send consents:write", "iat": 1767225600, "nbf": 1767225600,
    "exp": 1767229200}).encode()
hs_header = json.dumps({"alg": "HS256", "typ": "JWT", "kid": "hs1"}).encode()
hs_claims = json.dumps({
    "iss": "https://issuer.example", "aud": "consentry-api", "sub": "svc", "tenant": "acme",
    "scope": "messages:send", "exp": 4102444800, "iat": 4102441200,
    "senders": ["+12025550100"], "purposes": ["transactional"]}).encode()
dev_token = f"{b64url(dev_header)}.{b64url(dev_claims)}.{b64url(bytes(64))}"
write("jwt_verify", "dev-token-shape", b"\x00" + dev_token.encode())
write("jwt_verify", "bearer-header", b"\x01Bearer " + dev_token.encode())
write("jwt_verify", "hs256-signed", b"\x02\x00" + hs_header + SEP + hs_claims)
write("jwt_verify", "dev-signed", b"\x03\x00" + dev_header + SEP + dev_claims)
none_header = b64url(b'{"alg":"none"}')
write("jwt_verify", "alg-none", b"\x00" + f"{none_header}.{b64url(dev_claims)}.".encode())

# http_api: route byte (low 4 bits), purpose (high 4 bits)
write("http_api", "twilio-create", b"\x00To=%2B14155550123&From=%2B12025550100&Body=Hello+there")
write("http_api", "twilio-create-service", b"\x30To=4155550124&MessagingServiceSid=MG1&Body=Code+1234")
write("http_api", "telnyx-send", b"\x01" + json.dumps(
    {"from": "+12025550100", "to": "+14155550123", "text": "Hello"}).encode())
write("http_api", "vonage-form", b"\x02from=12025550100&to=14155550123&text=Hello")
write("http_api", "vonage-json", b"\x03" + json.dumps(
    {"api_key": "k", "from": "ACME", "to": "14155550123", "text": "Hello"}).encode())
write("http_api", "consent-record", b"\x04" + json.dumps({
    "number": "+14155550123", "action": "opt_in", "level": "express_written",
    "method": "web_form", "occurred_at": "2026-01-07T18:00:00Z",
    "scope": {"purposes": ["marketing"]},
    "evidence": {"disclosure_text": "I agree to receive texts", "ip": "203.0.113.7"}}).encode())
write("http_api", "consent-import-ndjson", b"\x05" + (
    json.dumps({"number": "+14155550123", "action": "opt_in", "level": "express"}) + "\n\n" +
    json.dumps({"number": "(415) 555-0124", "action": "opt_out"}) + "\r\n").encode())
write("http_api", "consent-import-csv", b"\x06number,action,level\n+14155550123,opt_in,express\r\n\"(415) 555-0124\",opt_out,\n")
write("http_api", "inbound-generic", b"\x07" + json.dumps(
    {"id": "in-1", "from": "+14155550123", "to": "+12025550100", "body": "STOP"}).encode())
write("http_api", "inbound-twilio", b"\x08MessageSid=SM1&From=%2B447911123457&To=%2B447911123456&Body=HELP")
write("http_api", "twilio-status", b"\x08MessageSid=SM1&MessageStatus=delivered")
write("http_api", "auth-basic", b"\x09Basic QUNmdXp6OnRva2Vu" + SEP + b"To=%2B14155550123&From=%2B12025550100&Body=Hi")
write("http_api", "vonage-form-secret", b"\x0afrom=ACME&to=14155550123&text=Hi")

# webhooks: dialect (low 2 bits) and signed here (bit 2)
tw_form = b"MessageSid=SM1&AccountSid=AC1&From=%2B14155550123&To=%2B12025550100&Body=STOP"
write("webhooks", "twilio-form-signed", b"\x04https://consentry.example/v1/inbound/tw" + SEP
      + b"application/x-www-form-urlencoded" + SEP + SEP + tw_form)
write("webhooks", "twilio-form-forged", b"\x00https://consentry.example:443/v1/inbound/tw?x=1" + SEP
      + b"application/x-www-form-urlencoded" + SEP + b"bm90IGEgc2lnbmF0dXJl" + SEP + tw_form)
tw_json = json.dumps({"MessageSid": "SM2", "MessageStatus": "undelivered", "ErrorCode": 30003}).encode()
write("webhooks", "twilio-json-signed", b"\x04https://consentry.example/v1/inbound/tw" + SEP
      + b"application/json" + SEP + SEP + tw_json)
write("webhooks", "twilio-json-forged", b"\x00https://consentry.example/v1/inbound/tw?bodySHA256="
      + hashlib.sha256(tw_json).hexdigest().encode() + SEP + b"application/json" + SEP + b"AAAA" + SEP + tw_json)
telnyx_received = json.dumps({"data": {"event_type": "message.received", "id": "ev-1", "payload": {
    "id": "msg-1", "from": {"phone_number": "+14155550123"}, "to": [{"phone_number": "+12025550100"}],
    "text": "STOP"}}}).encode()
telnyx_finalized = json.dumps({"data": {"event_type": "message.finalized", "payload": {
    "id": "msg-2", "to": [{"phone_number": "+14155550123", "status": "delivery_failed"}],
    "errors": [{"code": "40002", "title": "Blocked"}]}}}).encode()
write("webhooks", "telnyx-received-signed", b"\x05" + SEP + SEP + telnyx_received)
write("webhooks", "telnyx-finalized-signed", b"\x05" + SEP + SEP + telnyx_finalized)
write("webhooks", "telnyx-forged", b"\x011700000000" + SEP
      + b"T+SGmh2wzVcDrQwB36YuRpgIiqVMNkbm61ZRpHBBa/T/l9NOJNliOqxJee+AFWtVUSyfte+AX3iUnScLxAjaAw==" + SEP + telnyx_received)
generic = json.dumps({"id": "in-1", "from": "+14155550123", "to": "+12025550100", "body": "Stop please"}).encode()
write("webhooks", "generic-signed", b"\x06" + SEP + generic)
write("webhooks", "generic-forged", b"\x02sha256=" + b"00" * 32 + SEP + generic)

# gateway_answers
for name, value in [
    ("twilio-error", {"code": 21211, "message": "The 'To' number +14155550123 is not a valid phone number.",
                      "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}),
    ("telnyx-error", {"errors": [{"code": "40310", "title": "Invalid 'to' address",
                                  "detail": "The 'to' address +14155550123 is invalid."}]}),
    ("vonage-ok", {"message-count": "1", "messages": [{"to": "447700900000", "message-id": "0A0000000123ABCD1",
                                                      "status": "0", "remaining-balance": "3.14"}]}),
    ("vonage-refused", {"message-count": "1", "messages": [{"status": "3", "error-text": "Invalid to 447700900000"}]}),
    ("generic-id", {"id": 123456789}),
    ("telnyx-answer", {"data": {"id": "40385f64-5717-4562-b3fc-2c963f66afa6", "record_type": "message"}}),
]:
    write("gateway_answers", name, json.dumps(value).encode())
write("gateway_answers", "twilio-sid", b"SM0190f0c1c2d37b7e9b1a2c3d4e5f6a7b")

# import_chunks: seed byte, then the data (0xFE k b: k*512 copies of b)
write("import_chunks", "csv", b"\x07number,action\n+14155550123,opt_in\r\n\"(415) 555-0124\",\"opt_out\"\n")
write("import_chunks", "csv-quoted-multiline", b"\x2aa,b\n\"multi\nline, with \"\"quotes\"\"\",x\n\nlast,row")
write("import_chunks", "ndjson", b"\x11" + (json.dumps({"number": "+14155550123", "action": "opt_in"})
      + "\n\n" + json.dumps({"number": "+14155550124", "action": "opt_out"}) + "\r\n{\"c\":3}").encode())
write("import_chunks", "long-line", b"\x03a,b\n\xfe\x80x\n")

# keywords
for name, text in [
    ("stop", "STOP"), ("stop-please", "Stop please!!"), ("negated", "don't stop texting me"),
    ("phrase", "Please remove me from this list"), ("symbol", "\U0001f6d1"), ("help", "HELP"),
    ("start", "start"), ("accents", "ARRÊT"), ("fullwidth", "ｓｔｏｐ"), ("review", "stop by tomorrow?"),
]:
    write("keywords", name, text.encode())

# policy_load: mode byte
write("policy_load", "jurisdiction-us-fl", b"\x00" + policy("jurisdictions/us-fl.toml"))
write("policy_load", "jurisdiction-fr", b"\x00" + policy("jurisdictions/fr.toml"))
write("policy_load", "jurisdiction-us", b"\x00" + policy("jurisdictions/us.toml"))
write("policy_load", "override", b"\x01" + b'''[[rules]]
id = "us-fl-hours"
title = "Florida, stricter"
source = "operator"
country = "US"
regions = ["US-FL"]
area_codes = ["305"]
purposes = ["marketing", "informational"]
windows = { all = "09:00-17:30", sat = "10:00-12:00", sun = "closed" }
holidays = ["us-federal"]
outside_window = "reject"
cap = { count = 2, hours = 48 }
consent = "express_written"
''')
write("policy_load", "keywords", b"\x02" + policy("keywords.toml"))
write("policy_load", "consent", b"\x03" + policy("consent.toml"))
write("policy_load", "replies", b"\x03" + policy("replies.toml"))
write("policy_load", "zones", b"\x04" + b"1|America/New_York&America/Chicago\n1212|America/New_York\n33|Europe/Paris\n"
      + SEP + b"1212|US-NY\n" + SEP + b"1212|America/Chicago|America/New_York\n")

# config_parse
write("config_parse", "embedded-defaults", b'''
data_dir = "./consentry-data"

[jwt]
dev_issuer = true

[[tenants]]
id = "demo"
senders = ["+12025550100"]
upstream = "sandbox"
purposes = ["marketing", "informational", "transactional"]
default_region = "US"
''')
write("config_parse", "full", b'''
data_dir = "data"

[server]
listen = "127.0.0.1:8443"

[jwt]
leeway_seconds = 10
max_token_lifetime_seconds = 3600

[[jwt.issuers]]
issuer = "https://issuer.example"
audience = "consentry"
tenants = ["acme"]

[[jwt.issuers.keys]]
kid = "k1"
algorithm = "HS256"
secret = { env = "ISSUER_SECRET" }

[[upstreams]]
name = "tw"
kind = "twilio"
account_sid = "AC123"
credential = { file = "secrets/twilio" }
public_url = "https://sms.example.com/v1/inbound/tw"

[[upstreams]]
name = "tx"
kind = "telnyx"
credential = { env = "TELNYX_KEY" }
webhook_public_key = "IYZuBTlX3dje7w/t/U7vUA/wJGBCI6NY/gvb6NmtumY="

[[tenants]]
id = "acme"
senders = ["+12025550100", "ACME", "55555"]
upstream = "tw"
default_region = "US"
default_purpose = "informational"
program_name = "Acme Alerts"

[[tenants.brands]]
id = "shoes"
name = "Acme Shoes"
senders = ["ACME"]
campaigns = ["spring"]

[policies]
revoke_all = true
''')
write("config_parse", "policy-overrides", b'''
[[tenants]]
id = "demo"
senders = ["+12025550100"]
upstream = "sandbox"

[[policies.rules]]
id = "us-quiet"
title = "Quiet"
source = "operator"
country = "US"
purposes = ["marketing"]
windows = { all = "09:00-20:00" }
''')

# small_parsers: mode byte
for name, text in [
    ("rfc3339-z", "2026-01-07T18:00:00Z"), ("rfc3339-offset", "2026-01-07 18:00:00.123456+05:30"),
    ("message-id", "msg_0190f0c1c2d37b7e9b1a2c3d4e5f6a7b"), ("tenant", "acme-2"),
    ("public-key", "IYZuBTlX3dje7w/t/U7vUA/wJGBCI6NY/gvb6NmtumY="),
]:
    write("small_parsers", name, b"\x00" + text.encode())
leaf = bytes([1, 1]) + b"\x01" + (4).to_bytes(4, "big") + b"msg1" + b"\x00" + b"\x02" + (258).to_bytes(8, "big")
write("small_parsers", "leaf", b"\x01" + leaf)
checkpoint = {"tree_size": 3, "root_hash": "ab" * 32, "signed_at": "2026-01-07T18:00:00Z",
              "signed_at_us": 1767808800000000, "key_id": "k", "signature": base64.b64encode(bytes(64)).decode(),
              "signed_text": "consentry-log/v1\n3\n" + "ab" * 32 + "\n1767808800000000\n"}
write("small_parsers", "checkpoint", b"\x02" + json.dumps(checkpoint).encode())
write("small_parsers", "bundle", b"\x02" + json.dumps({
    "checkpoint": checkpoint, "recipient_hash": "h", "tenant": "demo",
    "messages": [{"leaf_index": 1, "leaf": base64.b64encode(leaf).decode(), "inclusion_proof": ["cd" * 32]}],
    "consent_events": []}).encode())
write("small_parsers", "merkle", b"\x03" + (5).to_bytes(8, "little") + (8).to_bytes(8, "little") + bytes(range(96)))

# smpp_pdus: one PDU after its command_length (command_id, status, sequence, body), as the
# front decodes it; and text (the same bytes are also read as text to encode and decode back).
def pdu(command_id: int, sequence: int, body: bytes) -> bytes:
    return command_id.to_bytes(4, "big") + bytes(4) + sequence.to_bytes(4, "big") + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def submit_sm(to: str, data_coding: int, esm_class: int, octets: bytes) -> bytes:
    return (cstr("") + bytes([1, 1]) + cstr("12025550100") + bytes([1, 1]) + cstr(to)
            + bytes([esm_class, 0, 0]) + cstr("") + cstr("") + bytes([1, 0, data_coding, 0])
            + bytes([len(octets)]) + octets)


write("smpp_pdus", "bind-transceiver", pdu(0x09, 1, cstr("acme-app") + cstr("s3cret") + cstr("")
                                            + bytes([0x34, 1, 1]) + cstr("")))
write("smpp_pdus", "enquire-link", pdu(0x15, 2, b""))
write("smpp_pdus", "submit-gsm", pdu(0x04, 3, submit_sm("14155550123", 0, 0, b"Hello \x1b\x65")))
ucs2 = "Привет 🎉".encode("utf-16-be")
write("smpp_pdus", "submit-ucs2-part", pdu(0x04, 4, submit_sm("14155550123", 8, 0x40,
                                                               bytes([5, 0, 3, 42, 2, 1]) + ucs2)))
write("smpp_pdus", "submit-udh16", pdu(0x04, 5, submit_sm("14155550123", 0, 0x40,
                                                           bytes([6, 8, 4, 1, 2, 3, 1]) + b"part")))
write("smpp_pdus", "deliver-sm-resp", pdu(0x80000005, 6, cstr("")))
write("smpp_pdus", "text", "Your code is 1234 €{}".encode())
print("seeds written under", HERE)
