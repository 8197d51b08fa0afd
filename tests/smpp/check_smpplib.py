"""smpplib (PyPI), unchanged, as an application would use it against consentry's SMPP front.

Binds as a transceiver, submits a short GSM message, a long UCS-2 message split by smpplib
itself (concatenated with a user data header), and a message to an opted-out number, then
prints one line per message: its name, the submit_sm_resp status and message id. The Rust
test (tests/api/smpp.rs) starts consentry, reads these lines and checks the gateway.
Settings come from the environment: SMPP_PORT, SMPP_SYSTEM_ID, SMPP_PASSWORD, SMPP_FROM,
SMPP_TO, SMPP_OPTED_OUT, SMPP_LONG.
"""

import os
import sys

import smpplib.client
import smpplib.consts
import smpplib.gsm


def main():
    env = os.environ
    client = smpplib.client.Client("127.0.0.1", int(env["SMPP_PORT"]), timeout=20)
    answers = {}

    def sent(pdu):
        message_id = pdu.message_id.decode() if pdu.message_id else ""
        answers[pdu.sequence] = (pdu.status, message_id)

    client.set_message_sent_handler(sent)
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
    while len(answers) < wanted:
        client.read_once()

    for name, numbers in sequences.items():
        results = {answers[number] for number in numbers}
        if len(results) != 1:
            sys.exit(f"{name}: its parts were answered differently: {sorted(results)}")
        status, message_id = results.pop()
        print(f"{name}: {hex(status)} {message_id}".rstrip())

    client.unbind()
    client.disconnect()


if __name__ == "__main__":
    main()
