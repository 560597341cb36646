"""Writes the seed corpora of esp_decap and esp_roundtrip (deterministic; rerun freely).

    python3 fuzz/gen_seeds.py

esp_decap seeds: scapy-made ESP packets from tests/interop/scapy_vectors.json with a
header that selects the matching SA (suite, mode, ESN, SPI, window top), and seeds for
the built-packet stage covering every selector bit. esp_roundtrip: random bytes.
"""
import json, os, struct, random
random.seed(4303)
here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, 'corpus')
d = json.load(open(os.path.join(here, '..', 'tests', 'interop', 'scapy_vectors.json')))
suites = [('aes-128-gcm', None), ('aes-256-gcm', None), ('chacha20-poly1305', None),
          ('aes-128-gmac', None), ('aes-256-gmac', None), ('aes-128-cbc', 'hmac-sha256-128'),
          ('aes-256-cbc', 'hmac-sha384-192'), ('null', 'hmac-sha1-96')]
out = os.path.join(root, 'esp_decap')
n = 0
seen = set()
# scapy packets: header so that the SA matches (suite, mode, esn, spi, highest = seq-1)
for v in d['vectors']:
    key = (v['cipher'], v['integrity'])
    if key not in suites:
        continue
    sel = suites.index(key) | (8 if v['mode'] == 'transport' else 0) | (0x10 if v['esn'] else 0)
    combo = (sel, bool(v['udp_encap']), v['outer_family'], v['inner_family'])
    if combo in seen:
        continue
    seen.add(combo)
    highest = ((v['esn_high'] or 0) << 32 | v['seq']) - 1
    data = bytes([sel, 0x44]) + struct.pack('>I', v['spi']) + struct.pack('>Q', highest) + bytes.fromhex(v['protected'])
    name = 'scapy-' + v['name'].replace('/', '_')
    open(os.path.join(out, name), 'wb').write(data)
    n += 1
# built-packet seeds: every suite, mode, esn, family, nat-t; no mutations
for sel in range(0, 256, 3):
    seq = [0, 1, 0xfffffffe, 0x1_ffff_fff0, 0xffff_ffff][sel % 5]
    plen = (sel * 7) % 100
    inner_v6 = 0x80 if sel % 2 else 0
    body = bytes([inner_v6 | plen]) + bytes(random.randrange(256) for _ in range(plen))
    if sel % 11 == 0:  # a few with mutations
        body += bytes(random.randrange(256) for _ in range(6))
    data = bytes([sel, random.randrange(256)]) + struct.pack('>I', 0x1000) + struct.pack('>Q', seq) + body
    open(os.path.join(out, 'built-%03d' % sel), 'wb').write(data)
    n += 1
print('esp_decap seeds', n)
# esp_roundtrip: random bytes of various lengths (arbitrary takes whatever it gets)
out = os.path.join(root, 'esp_roundtrip')
for i in range(48):
    ln = random.choice([16, 40, 64, 100, 200, 400, 900])
    open(os.path.join(out, 'seed-%02d' % i), 'wb').write(bytes(random.randrange(256) for _ in range(ln)))
print('esp_roundtrip seeds 48')
