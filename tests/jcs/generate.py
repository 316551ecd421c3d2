#!/usr/bin/env python3
"""Writes tests/jcs/vectors.json: golden RFC 8785 vectors for `v2` fingerprints.

The canonical bytes come from the `rfc8785` package (pinned in
requirements.txt), an implementation independent of this repository; the
fingerprints are `"v2:" + sha256(rfc8785.dumps([arg, ...])).hexdigest()`.
The output depends only on this file and the pinned package: vectors are
sorted by name, random ones come from a fixed seed, and the file is written
with sorted keys and ASCII escapes.

Run from anywhere: python3 tests/jcs/generate.py
"""

import hashlib
import importlib.metadata
import json
import math
import os
import random
import struct

import rfc8785

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors.json")
SEED = 8785
TWO_53 = 2**53

# RFC 8785, Appendix B: IEEE 754 bit patterns and their canonical text.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]

# Appendix B's NaN and Infinity, and -Infinity: no JSON form.
NON_FINITE = [
    ("nan", "7fffffffffffffff"),
    ("nan negative quiet", "fff8000000000000"),
    ("infinity", "7ff0000000000000"),
    ("infinity negative", "fff0000000000000"),
]

# RFC 8785, section 3.2.2: a parsed document and its canonical form.
RFC_3_2_2_INPUT = r"""{
  "numbers": [333333333.33333329, 1E30, 4.50,
              2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"""
RFC_3_2_2_CANONICAL = (
    '{"literals":[null,true,false],'
    '"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
)

# RFC 8785, section 3.2.3: members sorted by UTF-16 code units.
RFC_3_2_3_INPUT = r"""{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"""
RFC_3_2_3_ORDER = [
    "Carriage Return",
    "One",
    "Control",
    "Latin Small Letter O With Diaeresis",
    "Euro Sign",
    "Emoji: Grinning Face",
    "Hebrew Letter Dalet With Dagesh",
]

EVENT = '{"user_id": 42, "url": "https://example.com/x?a=1&b=2", "occurred_at": "2026-11-25T10:00:00Z"}'
EVENT_REORDERED = '{"occurred_at":"2026-11-25T10:00:00Z","url":"https://example.com/x?a=1&b=2","user_id":42}'


def parse_int(text):
    n = int(text)
    # JCS numbers are doubles; +-2^53 is still exact as one. Beyond it a JSON
    # integer has no RFC 8785 form (the library's exact-digit extension is
    # tested in Rust by hand), so no vector may contain one.
    assert abs(n) <= TWO_53, f"integer outside +-2^53 in a vector: {text}"
    return float(n) if abs(n) == TWO_53 else n


def parse(text):
    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_int=parse_int, parse_constant=no_constants)


def canonical(value):
    return rfc8785.dumps(value).decode("utf-8")


def fingerprint(args):
    return "v2:" + hashlib.sha256(rfc8785.dumps(list(args))).hexdigest()


def bits_of(x):
    return struct.pack(">d", x).hex()


def double(bits):
    return struct.unpack(">d", bytes.fromhex(bits))[0]


def value_vectors():
    """(name, JSON text) pairs: each becomes one value and `fingerprint([value])`."""
    every_control = "".join(chr(c) for c in range(0x20))
    texts = [
        ("rfc8785 3.2.2 example", RFC_3_2_2_INPUT),
        ("rfc8785 3.2.3 sorting example", RFC_3_2_3_INPUT),
        ("event", EVENT),
        ("event members reordered", EVENT_REORDERED),
        ("literal null", "null"),
        ("literal true", "true"),
        ("literal false", "false"),
        ("empty object", "{}"),
        ("empty array", "[]"),
        ("empty string", '""'),
        ("empty containers nested", '{"b": [[], {}], "a": {"x": {}, "y": []}}'),
        ("array order kept", '[3, 1, 2, "b", "a", null, false]'),
        ("keys out of order", '{"zeta": 1, "alpha": 2, "mid": 3, "Alpha": 4, "_": 5, "0": 6}'),
        ("keys prefixes", '{"abc": 1, "ab": 2, "a": 3, "": 4, "abd": 5, "b": 6}'),
        ("keys digits sort as text", '{"10": "ten", "9": "nine", "1": "one", "-1": "minus", "100": "hundred"}'),
        (
            "nested objects and arrays",
            '{"outer": {"z": [ {"b": 2, "a": 1}, [ {"d": {"f": 6, "e": 5}}, [] ] ], '
            '"a": {"c": {"b": {"a": [1, {"y": true, "x": false}]}}}}, "first": [[[["deep"]]]]}',
        ),
        ("whitespace ignored", ' \n\t{ "b" :\r\n [ 1 , 2 ] ,\t"a" : { } }  '),
        (
            "keys astral and private use",
            '{"\\ufffd": 1, "\\ud83d\\ude00": 2, "\\ue000": 3, "a": 4, "\\ud800\\udc00": 5, '
            '"\\uffff": 6, "\\ud7ff": 7, "\\udbff\\udfff": 8}',
        ),
        ("keys emoji prefix", '{"\\ud83d\\ude00b": 1, "\\ud83d\\ude00": 2, "\\ud83d\\ude00a": 3, "\\ud83d\\ude01": 4}'),
        ("keys latin and combining", '{"e\\u0301": 1, "\\u00e9": 2, "e": 3, "E": 4, "\\u00c9": 5}'),
        ("keys non-ascii raw utf-8", '{"\u00fc": 1, "\u4e2d": 2, "\U0001F680": 3, "\uff21": 4, "z": 5}'),
        ("string every control character", json.dumps(every_control)),
        ("string control characters upper-case escapes", '"' + "".join(f"\\u{c:04X}" for c in range(0x20)) + '"'),
        ("string quote backslash solidus", r'"quote \" backslash \\ solidus / escaped solidus \/"'),
        ("string del and c1", '"\\u007f \x7f \\u0080 \\u009f"'),
        ("string short escapes", r'"\b\t\n\f\r"'),
        ("string non-ascii", '"caf\u00e9 \u00fcber \u4e2d\u6587 \u0639\u0631\u0628\u064a"'),
        ("string non-ascii escaped", '"caf\\u00e9 \\u00fcber \\u4e2d\\u6587"'),
        ("string emoji", '"\U0001F600 \U0001F44D\U0001F3FD \U0001F468\u200d\U0001F469\u200d\U0001F467"'),
        ("string emoji escaped", '"\\ud83d\\ude00 \\ud83d\\udc4d\\ud83c\\udffd"'),
        ("string not normalized", '["e\\u0301", "\\u00e9"]'),
        ("string bmp edges", '"\\u0800 \\ud7ff \\ue000 \\ufffd \\uffff"'),
        ("string escapes in keys", '{"a\\nb": 1, "a\\"b": 2, "a\\\\b": 3, "a/b": 4, "a\\u0000b": 5, "a\\u001fb": 6}'),
        ("numbers 1e16", "1e16"),
        ("numbers 1e21", "1e21"),
        ("numbers 1e-7", "1e-7"),
        ("numbers 5e-324", "5e-324"),
        ("numbers max double", "1.7976931348623157e308"),
        ("numbers negative zero", "-0.0"),
        ("numbers negative zero integer", "-0"),
        ("numbers one point zero", "1.0"),
        ("numbers exponent forms", "[1E2, 1e+2, 100.0, 1.00e2, 10e1]"),
        ("numbers format boundaries", "[1e20, 1e21, 123e18, 1e-6, 1e-7, 0.000001234, 0.0000001234, 1.5e300, -2.5e-300]"),
        ("numbers rounded on parse", "[0.1, 0.2, 0.30000000000000004, 3.141592653589793238462643383279, 2.718281828459045]"),
        ("numbers as map values", '{"price": 19.99, "qty": 3, "ratio": -0.5, "big": 1e100, "tiny": 2e-310}'),
        ("integers small", "[0, 1, -1, 7, 42, -42, 255, 256, 65535, 65536]"),
        ("integers 32-bit edges", "[2147483647, -2147483648, 4294967295, 4294967296, -4294967296]"),
        ("integers 2^53 - 1", "9007199254740991"),
        ("integers -(2^53 - 1)", "-9007199254740991"),
        ("integers 2^53", "9007199254740992"),
        ("integers -(2^53)", "-9007199254740992"),
        ("integers safe edges", "[9007199254740990, 9007199254740991, -9007199254740990, -9007199254740991]"),
        ("integers powers of ten", "[" + ", ".join(str(10**k) for k in range(16)) + "]"),
    ]
    rng = random.Random(SEED + 53)
    ints = [rng.randint(-TWO_53, TWO_53) for _ in range(40)]
    ints += [rng.randint(-(10**6), 10**6) for _ in range(20)]
    texts.append(("integers random", "[" + ", ".join(str(n) for n in ints) + "]"))
    for i, n in enumerate(ints[:20]):
        texts.append((f"integers random {i:02}", str(n)))
    return texts


def call_vectors():
    """(name, [JSON text, ...]): the arguments of one fingerprinted call."""
    return [
        ("no arguments", []),
        ("event", [EVENT]),
        ("service and event", ['"url-shortener"', EVENT]),
        ("service and event reordered", ['"url-shortener"', EVENT_REORDERED]),
        ("event and service", [EVENT, '"url-shortener"']),
        ("one string holding a comma", ['"a,b"']),
        ("two strings", ['"a"', '"b"']),
        ("mixed scalars", ["1", '"a"', "null", "true", "1.5", "-0.0", "1e21"]),
        ("nested values", ['{"b": [1, {"d": 2, "c": 3}], "a": null}', "[[], {}]", '"\\u0000\\ud83d\\ude00"']),
        ("unicode keys", ['{"\\ufffd": 1, "\\ud83d\\ude00": 2}', '{"\\ue000": 3, "\\ud800\\udc00": 4}']),
        ("numbers", ["1e16", "5e-324", "1.7976931348623157e308", "9007199254740991", "-9007199254740992"]),
    ]


def appendix_b_vectors():
    out = []
    for bits, expected in APPENDIX_B:
        got = canonical(double(bits))
        assert got == expected, f"rfc8785 disagrees with RFC 8785 Appendix B on {bits}: {got}"
        out.append({
            "name": f"rfc8785 appendix B {bits}",
            "bits": bits,
            "canonical": got,
            "fingerprint": fingerprint([double(bits)]),
        })
    return out


def edge_vectors():
    """Powers of ten around the places the format switches, and neighbours."""
    out = []
    for k in range(-12, 26):
        x = float(f"1e{k}")
        for label, y in (("", x), (" next down", math.nextafter(x, 0.0)), (" next up", math.nextafter(x, math.inf))):
            for sign, z in (("", y), ("-", -y)):
                out.append({"name": f"edge {sign}1e{k}{label}", "bits": bits_of(z), "canonical": canonical(z)})
    for name, x in (
        ("min normal", 2.2250738585072014e-308),
        ("max subnormal", math.nextafter(2.2250738585072014e-308, 0.0)),
        ("one next up", math.nextafter(1.0, 2.0)),
        ("one next down", math.nextafter(1.0, 0.0)),
        ("2^53 next up", float(TWO_53 + 2)),
        ("2^63", 2.0**63),
        ("2^64", 2.0**64),
        ("0.1f32 widened", struct.unpack("<f", struct.pack("<f", 0.1))[0]),
    ):
        out.append({"name": f"edge {name}", "bits": bits_of(x), "canonical": canonical(x)})
    return out


def random_vectors():
    rng = random.Random(SEED)
    out = []
    while len(out) < 500:
        bits = rng.getrandbits(64)
        if (bits >> 52) & 0x7FF == 0x7FF:
            continue  # NaN or infinite
        hexbits = f"{bits:016x}"
        out.append({"name": f"random bits {len(out):03} {hexbits}", "bits": hexbits, "canonical": canonical(double(hexbits))})
    for i in range(500):
        digits = rng.randint(1, 17)
        mantissa = rng.randrange(10 ** (digits - 1), 10**digits)
        sign = rng.choice(["", "-"])
        form = rng.randrange(3)
        if form == 0:  # plain decimal, e.g. 12.345
            point = rng.randint(0, digits)
            s = str(mantissa)
            text = f"{sign}{s[:point] or '0'}.{s[point:] or '0'}"
        elif form == 1:  # small exponent, e.g. 12345e-3
            text = f"{sign}{mantissa}e{rng.randint(-30, 30)}"
        else:  # anywhere in range, e.g. 1.2345e-200
            s = str(mantissa)
            text = f"{sign}{s[0]}.{s[1:] or '0'}e{rng.randint(-300, 300)}"
        x = float(text)
        assert math.isfinite(x)
        out.append({"name": f"random decimal {i:03} {text}", "bits": bits_of(x), "text": text, "canonical": canonical(x)})
    return out


def non_finite_vectors():
    out = []
    for name, bits in NON_FINITE:
        try:
            rfc8785.dumps(double(bits))
        except rfc8785.CanonicalizationError:
            pass
        else:
            raise AssertionError(f"rfc8785 accepted {name}")
        out.append({"name": name, "bits": bits})
    return out


def by_name(vectors):
    names = [v["name"] for v in vectors]
    assert len(names) == len(set(names)), "duplicate vector names"
    return sorted(vectors, key=lambda v: v["name"])


def dump(doc):
    """The document as JSON with one vector a line, keys sorted, ASCII only."""

    def one(value):
        return json.dumps(value, ensure_ascii=True, sort_keys=True, separators=(", ", ": "))

    lines = ["{"]
    for i, key in enumerate(sorted(doc)):
        comma = "," if i < len(doc) - 1 else ""
        value = doc[key]
        if isinstance(value, list):
            items = [f"  {one(v)}," for v in value]
            items[-1] = items[-1][:-1]
            lines += [f" {one(key)}: [", *items, f" ]{comma}"]
        else:
            lines.append(f" {one(key)}: {one(value)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main():
    values = []
    for name, text in value_vectors():
        value = parse(text)
        values.append({"name": name, "input": text, "canonical": canonical(value), "fingerprint": fingerprint([value])})

    got = {v["name"]: v for v in values}
    assert got["rfc8785 3.2.2 example"]["canonical"] == RFC_3_2_2_CANONICAL
    sorted_3_2_3 = json.loads(got["rfc8785 3.2.3 sorting example"]["canonical"], object_pairs_hook=list)
    assert [v for _, v in sorted_3_2_3] == RFC_3_2_3_ORDER
    assert got["event"]["fingerprint"] == got["event members reordered"]["fingerprint"]

    calls = []
    for name, args in call_vectors():
        parsed = [parse(a) for a in args]
        calls.append({"name": name, "args": args, "canonical": canonical(parsed), "fingerprint": fingerprint(parsed)})
    got = {c["name"]: c for c in calls}
    assert got["service and event"]["fingerprint"] == got["service and event reordered"]["fingerprint"]
    assert got["event"]["fingerprint"] == values[[v["name"] for v in values].index("event")]["fingerprint"]

    doc = {
        "about": "RFC 8785 golden vectors for v2 fingerprints; written by tests/jcs/generate.py, do not edit",
        "canonicalizer": f"rfc8785 {importlib.metadata.version('rfc8785')} (Python)",
        "fingerprint": "v2: + lowercase hex sha256 of the RFC 8785 form of the JSON array of the arguments",
        "values": by_name(values),
        "calls": by_name(calls),
        "numbers": by_name(appendix_b_vectors() + edge_vectors() + random_vectors()),
        "non_finite": by_name(non_finite_vectors()),
    }
    with open(OUT, "w", encoding="ascii", newline="\n") as f:
        f.write(dump(doc))
    print(
        f"wrote {OUT}: {len(values)} values, {len(calls)} calls, "
        f"{len(doc['numbers'])} numbers, {len(doc['non_finite'])} non-finite"
    )


if __name__ == "__main__":
    main()
