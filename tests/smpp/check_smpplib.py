"""smpplib (PyPI), unchanged, as an application would use it against consentry's SMPP front.

Binds as a transceiver, submits a short GSM message, a long UCS-2 message split by smpplib
itself (concatenated with a user data header), and a message to an opted-out number, then
prints one line per message: its name, the submit_sm_resp status and message id; and waits for
the STOP a recipient sent (a deliver_sm), printing "mo: <text> from <number>". The Rust
test (tests/api/smpp.rs) starts consentry, reads these lines and checks the gateway.
Settings come from the environment: SMPP_PORT, SMPP_SYSTEM_ID, SMPP_PASSWORD, SMPP_FROM,
SMPP_TO, SMPP_OPTED_OUT, SMPP_LONG.
"""

import os
import sys
import time

import smpplib.client
import smpplib.consts
import smpplib.gsm


def main():
    env = os.environ
    client = smpplib.client.Client("127.0.0.1", int(env["SMPP_PORT"]), timeout=5)
    answers = {}

    def sent(pdu):
        message_id = pdu.message_id.decode() if pdu.message_id else ""
        answers[pdu.sequence] = (pdu.status, message_id)

    client.set_message_sent_handler(sent)
    received = []

    def delivered(pdu):
        received.append((pdu.source_addr.decode(), pdu.short_message.decode()))

    client.set_message_received_handler(delivered)
    # Denials are answers to check, not failures of the client.
    client.set_error_pdu_handler(lambda pdu: None)
    client.connect()
    client.bind_transceiver(system_id=env["SMPP_SYSTEM_ID"], password=env["SMPP_PASSWORD"])

    messages = [
        ("short", env["SMPP_TO"], "Hello from smpplib", smpplib.consts.SMPP_ENCODING_DEFAULT),
        ("long", env["SMPP_TO"], env["SMPP_LONG"], smpplib.consts.SMPP_ENCODING_ISO10646),
        ("opted out", env["SMPP_OPTED_OUT"], "Hello again", smpplib.consts.SMPP_ENCODING_DEFAULT),
    ]
    sequences = {}
    for name, to, text, encoding in messages:
        parts, coding, esm_class = smpplib.gsm.make_parts(text, encoding=encoding)
        if name == "long" and len(parts) < 2:
            sys.exit("the long message was not split: the test checks nothing")
        sequences[name] = []
        for part in parts:
            pdu = client.send_message(
                source_addr_ton=smpplib.consts.SMPP_TON_INTL,
                source_addr_npi=smpplib.consts.SMPP_NPI_ISDN,
                source_addr=env["SMPP_FROM"],
                dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
                dest_addr_npi=smpplib.consts.SMPP_NPI_ISDN,
                destination_addr=to,
                short_message=part,
                data_coding=coding,
                esm_class=esm_class,
                registered_delivery=False,
            )
            sequences[name].append(pdu.sequence)

    wanted = sum(len(numbers) for numbers in sequences.values())
    # The answers, and a recipient's STOP, which consentry delivers to a transceiver session
    # (the test sent it through the gateway's webhook before this session bound).
    deadline = time.monotonic() + 30
    while len(answers) < wanted or not received:
        if time.monotonic() > deadline:
            sys.exit(f"gave up waiting: {len(answers)} of {wanted} answers, replies {received}")
        client.read_once()

    for name, numbers in sequences.items():
        results = {answers[number] for number in numbers}
        if len(results) != 1:
            sys.exit(f"{name}: its parts were answered differently: {sorted(results)}")
        status, message_id = results.pop()
        print(f"{name}: {hex(status)} {message_id}".rstrip())

    for source, text in received:
        print(f"mo: {text} from {source}")
    client.unbind()
    client.disconnect()


if __name__ == "__main__":
    main()
