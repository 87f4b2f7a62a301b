"""An acquirer host driving Pinswitch's ISO 8583 listener with pyiso8583 (PyPI), a library this
project did not write, from its own field specifications (default_ascii, or default for the
binary-bitmap encoding) and PIN blocks made with pycryptodome's triple DES. The flows and the
cards come as JSON in argv[1]; each answer is printed as one line
`step=NAME mti=MTI 39=CODE [38=APPROVAL] [54=BALANCES]` for the Rust test (e2e_iso8583) to
check. It checks nothing itself beyond the framing."""

import datetime
import json
import socket
import ssl
import struct
import sys

import iso8583
from iso8583.specs import default, default_ascii
from Crypto.Cipher import DES3

config = json.loads(sys.argv[1])
spec = default_ascii if config["encoding"] == "ascii" else default
zpk = bytes.fromhex(config["zpk"]) if config["zpk"] != "clear" else None
sock = socket.create_connection(("127.0.0.1", config["port"]))
if "tls" in config:
    # Mutual TLS: the switch's CA, and this acquirer's own certificate (its identity).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(config["tls"]["ca"])
    context.load_cert_chain(config["tls"]["cert"], config["tls"]["key"])
    sock = context.wrap_socket(sock, server_hostname="localhost")
stan = 0


def pin_block(password, pan):
    """ISO 9564 format 0 under the zone PIN key (or clear)."""
    field = ("0" + format(len(password), "X") + password).ljust(16, "F")
    account = "0000" + pan[-13:-1]
    block = bytes(a ^ b for a, b in zip(bytes.fromhex(field), bytes.fromhex(account)))
    if zpk is not None:
        block = DES3.new(zpk, DES3.MODE_ECB).encrypt(block)
    # pyiso8583 takes DE 52 as hex text in both specifications (default writes it as 8 bytes).
    return block.hex().upper()


def now():
    utc = datetime.datetime.now(datetime.timezone.utc)
    return utc.strftime("%m%d%H%M%S"), utc.strftime("%H%M%S"), utc.strftime("%m%d")


def next_stan():
    global stan
    stan += 1
    return f"{stan:06d}"


def exchange(doc):
    raw, _ = iso8583.encode(doc, spec)
    sock.sendall(struct.pack(">H", len(raw)) + bytes(raw))
    head = read_exact(2)
    (length,) = struct.unpack(">H", head)
    answer, _ = iso8583.decode(bytearray(read_exact(length)), spec)
    return answer


def read_exact(count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise SystemExit("the switch closed the connection")
        data += chunk
    return data


def report(step, answer):
    line = f"step={step} mti={answer['t']} 39={answer.get('39', '')}"
    for field in ("38", "54", "11"):
        if field in answer:
            line += f" {field}={answer[field]}"
    print(line, flush=True)


def financial(mti, pan, processing, amount, password=None, original=None, currency="410",
              reuse=None):
    """A financial message; `reuse` = (stan, DE 7) of an earlier one (a retransmission)."""
    sent, local_time, local_date = now()
    trace, sent = reuse if reuse else (next_stan(), sent)
    doc = {
        "t": mti,
        "2": pan,
        "3": processing,
        "4": f"{amount:012d}",
        "7": sent,
        "11": trace,
        "12": local_time,
        "13": local_date,
        "37": f"RRN{trace}".ljust(12, "0"),
        "41": "TERM0001",
        "42": config["merchant"].ljust(15),
        "49": currency,
    }
    if password is not None:
        doc["52"] = pin_block(password, pan)
    if original is not None:
        original_mti, original_stan, original_sent = original
        doc["90"] = original_mti + original_stan + original_sent + "0" * 22
    return doc, (trace, sent)


def network(code):
    sent, _, _ = now()
    return {"t": "0800", "7": sent, "11": next_stan(), "70": code}


cards = config["cards"]
a, b = cards[0], cards[1]
flows = config["flows"]

if "echo" in flows:
    report("echo", exchange(network("301")))
if "pay" in flows:
    sale, sale_ids = financial("0200", a["pan"], "000000", 1000, a["password"])
    report("sale", exchange(sale))
    repeat = dict(sale, t="0201")
    report("repeat", exchange(repeat))
    auth, auth_ids = financial("0100", a["pan"], "000000", 3000, a["password"])
    report("auth", exchange(auth))
    completion, _ = financial("0220", a["pan"], "000000", 2500, original=("0100",) + auth_ids)
    report("completion", exchange(completion))
    too_much, _ = financial("0200", a["pan"], "000000", 10_000_000, a["password"])
    report("insufficient", exchange(too_much))
    wrong, _ = financial("0200", a["pan"], "000000", 100, "0000")
    report("wrong_pin", exchange(wrong))
    reversal, _ = financial("0400", a["pan"], "000000", 1000, original=("0200",) + sale_ids)
    report("reversal", exchange(reversal))
    balance, _ = financial("0200", a["pan"], "310000", 0)
    report("balance", exchange(balance))
    unknown, _ = financial("0200", config["unknown_pan"], "000000", 100, "1234")
    report("unknown_card", exchange(unknown))
    dollars, _ = financial("0200", a["pan"], "000000", 100, a["password"], currency="840")
    report("currency", exchange(dollars))
    # A reversal that overtakes its sale: the sale, when it comes, is refused.
    late_ids = (next_stan(), now()[0])
    early, _ = financial("0400", a["pan"], "000000", 700, original=("0200",) + late_ids)
    report("early_reversal", exchange(early))
    late, _ = financial("0200", a["pan"], "000000", 700, a["password"], reuse=late_ids)
    report("late_sale", exchange(late))
    paid, paid_ids = financial("0200", b["pan"], "000000", 2000, b["password"])
    report("sale_b", exchange(paid))
    refund, _ = financial("0200", b["pan"], "200000", 500, original=("0200",) + paid_ids)
    report("refund", exchange(refund))
    report("sign_off", exchange(network("002")))
    closed, _ = financial("0200", b["pan"], "000000", 100, b["password"])
    report("signed_off_sale", exchange(closed))
    report("sign_on", exchange(network("001")))
    reopened, _ = financial("0200", b["pan"], "000000", 100, b["password"])
    report("signed_on_sale", exchange(reopened))
if "merchants" in flows:
    # Its own merchant pays; another merchant's card acceptor id is refused, for a reversal too.
    own, own_ids = financial("0200", a["pan"], "000000", 300, a["password"])
    report("own_sale", exchange(own))
    own_merchant, config["merchant"] = config["merchant"], config["other_merchant"]
    foreign_reversal, _ = financial("0400", a["pan"], "000000", 300, original=("0200",) + own_ids)
    report("foreign_reversal", exchange(foreign_reversal))
    foreign_sale, _ = financial("0200", a["pan"], "000000", 300, a["password"])
    report("foreign_sale", exchange(foreign_sale))
    config["merchant"] = own_merchant
sock.close()
