"""A prepaid call platform driving Pinswitch's Diameter credit-control listener with
python-diameter (PyPI), a Diameter stack this project did not write: CER, DWR, a two-hour call
reported every minute (one report retransmitted with the T flag), an event charge, a call on a
card too poor for its request (a final unit), a re-auth request pushed when the card is
recharged and an abort when it is blocked (the Rust test does both over the native protocol
when this script says `waiting`), DPR, and malformed requests. Each answer is printed as one
line `step=NAME key=value ...` for the Rust test (e2e_diameter) to check."""

import json
import socket
import struct
import sys

from diameter.message import Message
from diameter.message.avp import Avp, AvpOctetString
from diameter.message.avp.grouped import (MultipleServicesCreditControl, RequestedServiceUnit,
                                          SubscriptionId, UsedServiceUnit)
from diameter.message.commands import (CapabilitiesExchangeRequest, CreditControlRequest,
                                       DeviceWatchdogRequest, DisconnectPeerRequest)
from diameter.message.commands.re_auth import ReAuthAnswer

config = json.loads(sys.argv[1])
sock = socket.create_connection(("127.0.0.1", config["port"]))
sock.settimeout(30)
ids = 0
END_USER_PRIVATE = 4
CALLED_STATION_ID = 30


def next_id():
    global ids
    ids += 1
    return ids


def send(message, retransmit_of=None):
    message.header.hop_by_hop_identifier = next_id()
    message.header.end_to_end_identifier = retransmit_of or message.header.hop_by_hop_identifier
    if retransmit_of:
        message.header.is_retransmit = True
    sock.sendall(message.as_bytes())


def receive():
    head = read_exact(4)
    length = struct.unpack(">I", b"\0" + head[1:4])[0]
    return Message.from_bytes(head + read_exact(length - 4))


def read_exact(count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise SystemExit("the switch closed the connection")
        data += chunk
    return data


def exchange(message, retransmit_of=None):
    send(message, retransmit_of)
    return receive()


def report(step, answer, **extra):
    fields = {"command": answer.header.command_code, "result": getattr(answer, "result_code", None)}
    fields.update(extra)
    print("step=" + step + "".join(f" {k}={v}" for k, v in fields.items()), flush=True)


def ccr(session, request_type, number, pin, requested_s=None, used_s=None, units=None,
        destination="01012345678"):
    message = CreditControlRequest()
    message.header.application_id = 4
    message.session_id = session
    message.origin_host = b"sw.test"
    message.origin_realm = b"test"
    message.destination_realm = b"local"
    message.auth_application_id = 4
    message.service_context_id = "32260@3gpp.org"
    message.cc_request_type = request_type
    message.cc_request_number = number
    message.subscription_id = [SubscriptionId(subscription_id_type=END_USER_PRIVATE,
                                              subscription_id_data=f"{pin:016d}")]
    mscc = MultipleServicesCreditControl(rating_group=1)
    if requested_s is not None or units is not None:
        mscc.requested_service_unit = RequestedServiceUnit(cc_time=requested_s,
                                                           cc_service_specific_units=units)
    if used_s is not None:
        mscc.used_service_unit = [UsedServiceUnit(cc_time=used_s)]
    message.multiple_services_credit_control = [mscc]
    message.append_avp(Avp.new(CALLED_STATION_ID, value=destination))
    return message


def granted(answer):
    mscc = answer.multiple_services_credit_control
    if not mscc or mscc[0].granted_service_unit is None:
        return None
    return mscc[0].granted_service_unit.cc_time


def final_unit(answer):
    mscc = answer.multiple_services_credit_control
    if not mscc or mscc[0].final_unit_indication is None:
        return None
    return mscc[0].final_unit_indication.final_unit_action


cer = CapabilitiesExchangeRequest()
cer.origin_host = b"sw.test"
cer.origin_realm = b"test"
cer.host_ip_address = ["127.0.0.1"]
cer.vendor_id = 0
cer.product_name = "call-platform"
cer.auth_application_id = [4]
report("cer", exchange(cer))
dwr = DeviceWatchdogRequest()
dwr.origin_host = b"sw.test"
dwr.origin_realm = b"test"
report("dwr", exchange(dwr))

# A two-hour call on the rich card, reported every minute; report 5 is sent twice.
rich, poor = config["rich"], config["poor"]
session = "sw.test;call;1"
answer = exchange(ccr(session, 1, 0, rich, requested_s=60))
report("initial", answer, granted=granted(answer))
results = []
for number in range(1, 120):
    update = ccr(session, 2, number, rich, requested_s=60, used_s=60)
    send(update)
    answer = receive()
    results.append(answer.result_code)
    if number == 5:
        again = exchange(update, retransmit_of=update.header.end_to_end_identifier)
        report("retransmitted", again, granted=granted(again))
report("updates", answer, all_success=all(code == 2001 for code in results), count=len(results))
answer = exchange(ccr(session, 3, 120, rich, used_s=60))
report("termination", answer)

# An event: 3 calls of a phone information number.
answer = exchange(ccr("sw.test;event;1", 4, 0, rich, units=3, destination="15881234"))
report("event", answer)

# The poor card asks for an hour: the switch grants what it can pay, as a final unit.
answer = exchange(ccr("sw.test;call;2", 1, 0, poor, requested_s=3600))
report("poor_initial", answer, granted=granted(answer), final_unit=final_unit(answer))
answer = exchange(ccr("sw.test;call;2", 3, 1, poor, used_s=granted(answer) or 0))
report("poor_termination", answer)

# A call the Rust test recharges (a re-auth request comes) and then blocks (an abort comes).
answer = exchange(ccr("sw.test;call;3", 1, 0, config["pushed"], requested_s=60))
report("pushed_initial", answer)
print("waiting", flush=True)
sys.stdin.readline()
push = receive()
report("push_1", push, session=push.session_id, request=int(push.header.is_request))
raa = push.to_answer()
raa.result_code = 2001
raa.origin_host = b"sw.test"
raa.origin_realm = b"test"
sock.sendall(raa.as_bytes())
print("waiting", flush=True)
sys.stdin.readline()
push = receive()
report("push_2", push, session=push.session_id, request=int(push.header.is_request))

# Unknown sessions, missing and unknown mandatory AVPs, a bad AVP length.
answer = exchange(ccr("sw.test;nobody", 2, 1, rich, used_s=1))
report("unknown_session", answer)
missing = ccr("sw.test;call;4", 1, 0, rich, requested_s=60)
missing.subscription_id = []
report("missing_avp", exchange(missing))
unknown = ccr("sw.test;call;5", 1, 0, rich, requested_s=60)
# An AVP no dictionary knows, with the M flag (0x40): built by hand, as a newer peer would send.
unknown.append_avp(AvpOctetString(code=99999, payload=b"x", flags=0x40))
report("unknown_avp", exchange(unknown))
raw = bytearray(ccr("sw.test;call;6", 1, 0, rich, requested_s=60).as_bytes())
raw[20 + 5] = 0x7F  # Session-Id's length far past the message
raw[12:20] = struct.pack(">II", 900, 900)
sock.sendall(bytes(raw))
report("bad_length", receive())
dpr = DisconnectPeerRequest()
dpr.origin_host = b"sw.test"
dpr.origin_realm = b"test"
dpr.disconnect_cause = 0
report("dpr", exchange(dpr))
sock.close()
