"""The official Twilio, Telnyx and Vonage Python SDKs against consentry, changed only in their
base URL (Vonage: its REST host).

Run by tests/api/fronts.rs with CONSENTRY_URL, CONSENTRY_TOKEN, CONSENTRY_VONAGE_TOKEN (a token
whose purposes claim names one purpose: the Vonage SDK cannot add a header), CONSENTRY_FROM,
CONSENTRY_OPTED_OUT, CONSENTRY_SEND_AT (a time a day after the server's clock, for a
scheduled send) and a CA bundle (SSL_CERT_FILE, REQUESTS_CA_BUNDLE) in the environment.
Prints "twilio: ok", "telnyx: ok" and "vonage: ok"; exits non-zero on the first failed
expectation.
"""

import os
import sys

URL = os.environ["CONSENTRY_URL"]
TOKEN = os.environ["CONSENTRY_TOKEN"]
VONAGE_TOKEN = os.environ["CONSENTRY_VONAGE_TOKEN"]
FROM = os.environ["CONSENTRY_FROM"]
OPTED_OUT = os.environ["CONSENTRY_OPTED_OUT"]
SEND_AT = os.environ["CONSENTRY_SEND_AT"]
ACCOUNT = "AC00000000000000000000000000000009"


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}")
        sys.exit(1)


def twilio_sdk():
    from twilio.base.exceptions import TwilioRestException
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    client = Client(ACCOUNT, TOKEN, http_client=TwilioHttpClient())
    client.api.base_url = URL  # the one change an application makes
    client.http_client.session.headers["X-Consentry-Purpose"] = "transactional"
    message = client.messages.create(to="+14155550123", from_=FROM, body="Your code is 1234")
    check(message.sid.startswith("SM"), f"a message SID, got {message.sid}")
    check(message.status == "queued", f"status queued, got {message.status}")
    fetched = client.messages(message.sid).fetch()
    check(fetched.status == "sent", f"status sent once fetched, got {fetched.status}")
    # messages:read without audit:decrypt (and no twilio_fetch_body): no body.
    check(fetched.body == "", f"no body without audit:decrypt, got {fetched.body!r}")
    try:
        client.messages.create(to=OPTED_OUT, from_=FROM, body="hello")
        check(False, "a send to an opted-out number must raise")
    except TwilioRestException as error:
        check(error.code == 21610, f"error 21610, got {error.code}")
        check(error.status == 400, f"status 400, got {error.status}")
    # An MMS: media only, no body.
    mms = client.messages.create(
        to="+14155550126",
        from_=FROM,
        media_url=["https://media.example/cat.jpg", "https://media.example/dog.png"],
    )
    check(mms.status == "queued", f"an MMS queued, got {mms.status}")
    check(mms.num_media == "2", f"two media, got {mms.num_media}")
    # Scheduled through a messaging service, then canceled, as Twilio's own guide does it.
    from datetime import datetime

    send_at = datetime.fromisoformat(SEND_AT.replace("Z", "+00:00"))
    held = client.messages.create(
        to="+14155550125",
        messaging_service_sid="MG00000000000000000000000000000001",
        body="Your appointment is tomorrow",
        send_at=send_at,
        schedule_type="fixed",
    )
    check(held.status == "scheduled", f"status scheduled, got {held.status}")
    canceled = client.messages(held.sid).update(status="canceled")
    check(canceled.status == "canceled", f"status canceled, got {canceled.status}")
    check(client.messages(held.sid).fetch().status == "canceled", "canceled once fetched")
    print("twilio: ok")


def telnyx_sdk():
    import telnyx

    client = telnyx.Telnyx(
        api_key=TOKEN,
        base_url=f"{URL}/v2",  # the one change an application makes
        default_headers={"X-Consentry-Purpose": "transactional"},
    )
    sent = client.messages.send(from_=FROM, to="+14155550124", text="Your code is 1234")
    check(sent.data.to[0].phone_number == "+14155550124", f"the recipient, got {sent.data}")
    try:
        client.messages.send(from_=FROM, to=OPTED_OUT, text="hello")
        check(False, "a send to an opted-out number must raise")
    except telnyx.APIStatusError as error:
        check(error.status_code == 400, f"status 400, got {error.status_code}")
        check("40300" in str(error.body), f"code 40300, got {error.body}")
    print("telnyx: ok")


def vonage_sdk():
    from vonage import Auth, HttpClientOptions, Vonage
    from vonage_sms import SmsError, SmsMessage

    # The SDK sends the key and secret as HTTP Basic: the JWT goes where the secret went.
    client = Vonage(
        Auth(api_key="consentry", api_secret=VONAGE_TOKEN),
        HttpClientOptions(rest_host=URL.removeprefix("https://")),  # the one change
    )
    sent = client.sms.send(
        SmsMessage(to="14155550125", from_=FROM.lstrip("+"), text="Your code is 1234")
    )
    message = sent.messages[0]
    check(message.status == "0", f"status 0, got {message}")
    check(bool(message.message_id), f"a message id, got {message}")
    check(message.to == "14155550125", f"the recipient, got {message.to}")
    try:
        client.sms.send(SmsMessage(to=OPTED_OUT.lstrip("+"), from_=FROM.lstrip("+"), text="hello"))
        check(False, "a send to an opted-out number must raise")
    except SmsError as error:
        # Vonage's own status for a barred number, with consentry's code in the text.
        check("error code 7: opted_out" in str(error), f"status 7 (opted_out), got {error}")
    print("vonage: ok")


twilio_sdk()
telnyx_sdk()
vonage_sdk()
