#!/usr/bin/python3
"""Writes the captures replayed by collector/tests/replay.rs, one per traffic shape.

Run with Debian's python3-scapy (`/usr/bin/python3 make_captures.py` in this directory); the
output is deterministic (fixed addresses, ports, ids and timestamps), so re-running it rewrites
the same files. Every address is from the documentation ranges (RFC 5737: 192.0.2.0/24,
198.51.100.0/24, 203.0.113.0/24; RFC 3849: 2001:db8::/32) and each shape uses its own, so the
conversations of different captures never mix when they are replayed into one collector.

The captures describe traffic, not what flowlens should make of it: the test computes the
expected conversations from tshark's dissection of these files.
"""

import os
import random

from scapy.all import (
    ARP, DNS, DNSQR, DNSRR, GRE, ICMP, IP, TCP, UDP, Dot1AD, Dot1Q, Ether, IPv6,
    IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting, PadN, Raw, RouterAlert, SCTP, SCTPChunkAbort, SCTPChunkCookieAck,
    SCTPChunkCookieEcho, SCTPChunkData, SCTPChunkHeartbeatAck, SCTPChunkHeartbeatReq,
    SCTPChunkInit, SCTPChunkInitAck, SCTPChunkSACK, SCTPChunkShutdown, SCTPChunkShutdownAck,
    SCTPChunkShutdownComplete, fragment, raw, rdpcap, wrpcap,
)
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet6 import (
    ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6MLDMultAddrRec,
    ICMPv6MLReport2, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6PacketTooBig,
)
from scapy.layers.netbios import NBNSHeader, NBNSQueryRequest, NBNSQueryResponse
from scapy.layers.ntp import NTP
from scapy.layers.vxlan import VXLAN

HERE = os.path.dirname(os.path.abspath(__file__))
START = 1_700_000_000.0


def mac(n):
    return "02:00:00:00:%02x:%02x" % (n >> 8, n & 0xFF)


BROADCAST = "ff:ff:ff:ff:ff:ff"


class Pause:
    """A silence of `seconds` in a capture, between two frames."""

    def __init__(self, seconds):
        self.seconds = seconds


def write(name, frames, pad=False):
    """Writes `frames` 1 ms apart (plus any `Pause` among them); `pad` pads frames to the
    60-byte Ethernet minimum as a capture on a real LAN shows them."""
    out = []
    t = START
    for f in frames:
        if isinstance(f, Pause):
            t += f.seconds
            continue
        data = raw(f)
        if pad and len(data) < 60:
            data += b"\x00" * (60 - len(data))
        f = Ether(data)
        f.time = t
        t += 0.001
        out.append(f)
    wrpcap(os.path.join(HERE, name), out)
    assert [raw(p) for p in rdpcap(os.path.join(HERE, name))] == [raw(p) for p in out]
    print(f"{name}: {len(out)} frames")


def interleave(conversations, seed):
    """Merges the conversations' frame lists into one, each keeping its own order, the way
    concurrent conversations mix on a link (deterministic for a given seed)."""
    rng = random.Random(seed)
    pending = [list(c) for c in conversations if c]
    out = []
    while pending:
        c = rng.choice(pending)
        out.append(c.pop(0))
        if not c:
            pending.remove(c)
    return out


def tcp_session(e, c, s, cport, sport, request, response, seq_c=1000, seq_s=5000, mss=1400):
    """A whole TCP connection seen between the two ends: handshake, one request, a response
    in MSS-sized segments (each acknowledged), FIN both ways. `e(src, dst)` makes the link and
    network headers for a packet from src to dst."""
    frames = []
    c_seq, s_seq = seq_c, seq_s
    frames.append(e(c, s) / TCP(sport=cport, dport=sport, flags="S", seq=c_seq, options=[("MSS", 1460)]))
    frames.append(e(s, c) / TCP(sport=sport, dport=cport, flags="SA", seq=s_seq, ack=c_seq + 1, options=[("MSS", 1460)]))
    c_seq += 1
    s_seq += 1
    frames.append(e(c, s) / TCP(sport=cport, dport=sport, flags="A", seq=c_seq, ack=s_seq))
    frames.append(e(c, s) / TCP(sport=cport, dport=sport, flags="PA", seq=c_seq, ack=s_seq) / Raw(request))
    c_seq += len(request)
    for off in range(0, len(response), mss):
        chunk = response[off:off + mss]
        frames.append(e(s, c) / TCP(sport=sport, dport=cport, flags="PA" if off + mss >= len(response) else "A", seq=s_seq, ack=c_seq) / Raw(chunk))
        s_seq += len(chunk)
        frames.append(e(c, s) / TCP(sport=cport, dport=sport, flags="A", seq=c_seq, ack=s_seq))
    frames.append(e(c, s) / TCP(sport=cport, dport=sport, flags="FA", seq=c_seq, ack=s_seq))
    c_seq += 1
    frames.append(e(s, c) / TCP(sport=sport, dport=cport, flags="FA", seq=s_seq, ack=c_seq))
    s_seq += 1
    frames.append(e(c, s) / TCP(sport=cport, dport=sport, flags="A", seq=c_seq, ack=s_seq))
    return frames


def mirror():
    """A LAN seen on a mirror (SPAN) port: both directions of everything, concurrent
    conversations interleaved, plus broadcast and multicast chatter. Clients .11-.16 (and
    2001:db8:1::11-16), a media device .30, the router .1, DNS .53, NTP .123; web servers off
    the LAN (198.51.100.80-82) behind the router. Two answers come after a pause longer than
    the collector's scan interval, so a scan sees only their answering side."""
    macs = {"192.0.2.30": mac(30), "192.0.2.53": mac(53), "192.0.2.123": mac(123),
            "2001:db8:1::53": mac(53)}
    for n in range(11, 17):
        macs[f"192.0.2.{n}"] = macs[f"2001:db8:1::{n}"] = mac(n)

    def e(src, dst):
        ip = IPv6 if ":" in src else IP
        return Ether(src=macs.get(src, mac(1)), dst=macs.get(dst, mac(1))) / ip(src=src, dst=dst)

    def dns(client, server, cport, name, qtype, answer):
        q = DNSQR(qname=name, qtype=qtype)
        return [e(client, server) / UDP(sport=cport, dport=53) / DNS(id=cport, rd=1, qd=q),
                e(server, client) / UDP(sport=53, dport=cport)
                / DNS(id=cport, qr=1, rd=1, ra=1, qd=q, an=DNSRR(rrname=name, type=qtype, rdata=answer, ttl=300))]

    rng = random.Random(10)
    conversations = []
    # ARP: who has the router, its answer (not IP: not recorded).
    conversations.append([
        Ether(src=mac(11), dst=BROADCAST) / ARP(op=1, hwsrc=mac(11), psrc="192.0.2.11", pdst="192.0.2.1"),
        Ether(src=mac(1), dst=mac(11)) / ARP(op=2, hwsrc=mac(1), psrc="192.0.2.1", hwdst=mac(11), pdst="192.0.2.11"),
    ])
    # DNS over IPv4 and IPv6, a new source port per query.
    for i in range(12):
        n = 11 + i % 6
        if i % 3 == 2:
            conversations.append(dns(f"2001:db8:1::{n}", "2001:db8:1::53", 51000 + i, f"host{i}.example.test", "AAAA", "2001:db8:1::80"))
        else:
            conversations.append(dns(f"192.0.2.{n}", "192.0.2.53", 51000 + i, f"host{i}.example.test", "A", "198.51.100.80"))
    # Web pages and downloads over TCP, through the router.
    for i in range(10):
        n = 11 + i % 6
        server, port = ("198.51.100.82", 443) if i % 4 == 3 else (f"198.51.100.{80 + i % 2}", 80)
        client = f"2001:db8:1::{n}" if i == 5 else f"192.0.2.{n}"
        server = "2001:db8:1::80" if i == 5 else server
        size = rng.randrange(200, 6000)
        conversations.append(tcp_session(e, client, server, 40100 + i, port,
                                         b"GET /%d HTTP/1.1\r\nHost: www.example.test\r\n\r\n" % i,
                                         b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * size, seq_c=1000 * i, seq_s=7000 * i))
    # NTP: clients poll twice (both ends on port 123).
    for n in (13, 14, 15):
        poll = [e(f"192.0.2.{n}", "192.0.2.123") / UDP(sport=123, dport=123) / NTP(mode=3),
                e("192.0.2.123", f"192.0.2.{n}") / UDP(sport=123, dport=123) / NTP(mode=4, stratum=2)]
        conversations.append(poll * 2)
    # NetBIOS name service: a broadcast query, repeated, answered by the device.
    query = (Ether(src=mac(12), dst=BROADCAST) / IP(src="192.0.2.12", dst="192.0.2.255") / UDP(sport=137, dport=137)
             / NBNSHeader(NAME_TRN_ID=0x4242, NM_FLAGS=0x11, QDCOUNT=1) / NBNSQueryRequest(QUESTION_NAME="PRINTER"))
    conversations.append([query] * 3)
    conversations.append([e("192.0.2.30", "192.0.2.12") / UDP(sport=137, dport=137)
                          / NBNSHeader(NAME_TRN_ID=0x4242, RESPONSE=1, NM_FLAGS=0x58, ANCOUNT=1) / NBNSQueryResponse(RR_NAME="PRINTER")])
    # SSDP: searches to the multicast group, unicast answers from the device, its NOTIFY.
    search = b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n"
    conversations.append([Ether(src=mac(11), dst="01:00:5e:7f:ff:fa") / IP(src="192.0.2.11", dst="239.255.255.250", ttl=2)
                          / UDP(sport=50123, dport=1900) / Raw(search)] * 2)
    conversations.append([e("192.0.2.30", "192.0.2.11") / UDP(sport=1900, dport=50123)
                          / Raw(b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\nLOCATION: http://192.0.2.30:8080/desc.xml\r\n\r\n")] * 2)
    conversations.append([Ether(src=mac(30), dst="01:00:5e:7f:ff:fa") / IP(src="192.0.2.30", dst="239.255.255.250", ttl=2)
                          / UDP(sport=1900, dport=1900) / Raw(b"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nNTS: ssdp:alive\r\n\r\n")] * 3)
    # mDNS.
    conversations.append([Ether(src=mac(13), dst="01:00:5e:00:00:fb") / IP(src="192.0.2.13", dst="224.0.0.251", ttl=255)
                          / UDP(sport=5353, dport=5353) / DNS(qd=DNSQR(qname="_ipp._tcp.local", qtype="PTR"))] * 2)
    # A refused connection (SYN, RST-ACK).
    conversations.append([e("192.0.2.12", "198.51.100.80") / TCP(sport=40002, dport=443, flags="S", seq=1),
                          e("198.51.100.80", "192.0.2.12") / TCP(sport=443, dport=40002, flags="RA", seq=0, ack=2)])
    # A download already running when the capture started: the server's packets come first.
    download, seq = [], 90000
    for _ in range(3):
        download.append(e("198.51.100.80", "192.0.2.13") / TCP(sport=80, dport=40003, flags="A", seq=seq, ack=777) / Raw(b"y" * 1200))
        seq += 1200
        download.append(e("192.0.2.13", "198.51.100.80") / TCP(sport=40003, dport=80, flags="A", seq=777, ack=seq))
    conversations.append(download)
    f = interleave(conversations, seed=1)
    # Slow answers: the query, a pause of 1.2 s, the answer; a connection that goes quiet and
    # then only the server speaks (its last data and FIN, acknowledged after another pause).
    slow = dns("192.0.2.16", "192.0.2.53", 52000, "slow.example.test", "A", "198.51.100.81")
    quiet = tcp_session(e, "192.0.2.15", "198.51.100.81", 40200, 80, b"GET /slow HTTP/1.1\r\n\r\n", b"z" * 3000)
    f += [slow[0], Pause(1.2), slow[1]]
    f += quiet[:5] + [Pause(1.2)] + [quiet[6], Pause(1.2)] + quiet[5:6] + quiet[7:]
    f.append(Ether(src=mac(30), dst=BROADCAST) / ARP(op=1, hwsrc=mac(30), psrc="192.0.2.30", pdst="192.0.2.30"))
    write("mirror.pcap", f, pad=True)


def vlans():
    """802.1Q, QinQ (802.1ad outer tag and 802.1Q inner), two 802.1Q tags, and a
    priority-tagged frame (VLAN id 0), each with traffic both ways; TCP and VXLAN on a VLAN."""
    f = []

    def tagged(tags, src, dst, sport, dport, payload):
        ip = IPv6 if ":" in src else IP
        frame = Ether(src=mac(0x100), dst=mac(0x101))
        for kind, vid, prio in tags:
            frame = frame / (Dot1AD if kind == "ad" else Dot1Q)(vlan=vid, prio=prio)
        return frame / ip(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"v" * payload)

    for tags, a, b in [
        ([("q", 100, 0)], "203.0.113.1", "203.0.113.2"),
        ([("q", 100, 0)], "2001:db8:2::1", "2001:db8:2::2"),
        ([("ad", 200, 0), ("q", 300, 0)], "203.0.113.3", "203.0.113.4"),
        ([("q", 400, 0), ("q", 500, 0)], "203.0.113.5", "203.0.113.6"),
        ([("q", 0, 5)], "203.0.113.7", "203.0.113.8"),
    ]:
        for i in range(4):
            f.append(tagged(tags, a, b, 33000, 7000, 100 + i))
            f.append(tagged(tags, b, a, 7000, 33000, 300))

    def e(src, dst):
        return Ether(src=mac(0x100), dst=mac(0x101)) / Dot1Q(vlan=100) / IP(src=src, dst=dst)

    f += tcp_session(e, "203.0.113.9", "203.0.113.10", 41000, 8080, b"hello", b"z" * 2000)
    # VXLAN on VLAN 100: the outer frames carry the tag, the frames inside have none.
    for i in range(2):
        for vteps, ends, ports in [
            (("203.0.113.11", "203.0.113.12"), ("203.0.113.13", "203.0.113.14"), (33100, 7100)),
            (("203.0.113.12", "203.0.113.11"), ("203.0.113.14", "203.0.113.13"), (7100, 33100)),
        ]:
            f.append(e(*vteps) / UDP(sport=49200, dport=4789) / VXLAN(vni=77)
                     / Ether(src=mac(0x102), dst=mac(0x103)) / IP(src=ends[0], dst=ends[1])
                     / UDP(sport=ports[0], dport=ports[1]) / Raw(b"t" * (50 + i)))
    write("vlan.pcap", f)


def ipv4_fragments():
    """UDP datagrams and pings fragmented at 1500 bytes: in order, fragments reversed (later
    fragments before their first), a datagram whose first fragment never comes, and the answers."""
    f = []

    def frags(src, dst, l4, ident, size):
        packet = IP(src=src, dst=dst, id=ident) / l4 / Raw(b"f" * size)
        return [Ether(src=mac(0x200), dst=mac(0x201)) / p for p in fragment(packet, fragsize=1480)]

    a, b, c = "198.51.100.17", "198.51.100.18", "198.51.100.19"
    f += frags(a, b, UDP(sport=40000, dport=9000), 0x101, 3000)
    f += reversed(frags(a, b, UDP(sport=40000, dport=9000), 0x102, 3000))
    f += frags(b, a, UDP(sport=9000, dport=40000), 0x201, 2000)
    f += frags(a, b, UDP(sport=40000, dport=9000), 0x103, 1000)
    f += frags(a, b, UDP(sport=40001, dport=9000), 0x104, 4000)[1:]
    f += frags(a, c, ICMP(type=8, id=9, seq=1), 0x105, 2000)
    f += frags(c, a, ICMP(type=0, id=9, seq=1), 0x301, 2000)
    write("ipv4_fragments.pcap", f)


def ipv6_extension_headers():
    """IPv6 with hop-by-hop options, destination options, routing headers (type 0 and segment
    routing), fragment headers (in order and reversed) and a chain of four headers, over UDP,
    TCP and ICMPv6 (an MLDv2 report with its router alert)."""
    f = []
    a, b = "2001:db8:4::1", "2001:db8:4::2"

    def e(src, dst):
        return Ether(src=mac(0x400), dst=mac(0x401)) / IPv6(src=src, dst=dst)

    for i in range(3):
        f.append(e(a, b) / IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00\x00\x00\x00")]) / UDP(sport=34000, dport=7000) / Raw(b"h" * 50))
        f.append(e(b, a) / IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00\x00\x00\x00")]) / UDP(sport=7000, dport=34000) / Raw(b"h" * 80))
    f.append(e(a, b) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")]) / TCP(sport=34001, dport=80, flags="S"))
    f.append(e(b, a) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")]) / TCP(sport=80, dport=34001, flags="SA"))
    f.append(e(a, b) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")]) / TCP(sport=34001, dport=80, flags="A"))
    f.append(e(a, b) / IPv6ExtHdrRouting(type=0, addresses=["2001:db8:4::3"], segleft=1) / UDP(sport=34002, dport=7001) / Raw(b"r" * 20))
    f.append(e(a, b) / IPv6ExtHdrSegmentRouting(addresses=["2001:db8:4::2", "2001:db8:4::3"], segleft=1) / UDP(sport=34003, dport=7002) / Raw(b"s" * 20))
    f.append(e(b, a) / IPv6ExtHdrSegmentRouting(addresses=["2001:db8:4::1"], segleft=0) / UDP(sport=7002, dport=34003) / Raw(b"s" * 40))
    datagram = IPv6(src=a, dst=b) / IPv6ExtHdrFragment(id=0x11) / UDP(sport=34004, dport=7003) / Raw(b"F" * 3000)
    f += [Ether(src=mac(0x400), dst=mac(0x401)) / p for p in fragment6(datagram, 1280)]
    datagram = IPv6(src=a, dst=b) / IPv6ExtHdrFragment(id=0x12) / UDP(sport=34004, dport=7003) / Raw(b"G" * 2000)
    f += reversed([Ether(src=mac(0x400), dst=mac(0x401)) / p for p in fragment6(datagram, 1280)])
    f.append(e(a, b) / IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00\x00\x00\x00")]) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")])
             / IPv6ExtHdrRouting(type=0, addresses=["2001:db8:4::3"], segleft=1) / IPv6ExtHdrFragment(id=0x13, m=0, offset=0) / UDP(sport=34005, dport=7004) / Raw(b"c" * 30))
    f.append(Ether(src=mac(0x400), dst="33:33:00:00:00:16") / IPv6(src="fe80::1", dst="ff02::16", hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert()])
             / ICMPv6MLReport2(records=[ICMPv6MLDMultAddrRec(dst="ff02::fb")]))
    write("ipv6_extension_headers.pcap", f)


def fragment6(packet, mtu):
    from scapy.layers.inet6 import fragment6 as scapy_fragment6
    return scapy_fragment6(packet, mtu)


def sctp():
    """An SCTP association over IPv4 from INIT to SHUTDOWN COMPLETE, and one over IPv6 that
    is aborted."""
    f = []

    def e(src, dst):
        ip = IPv6 if ":" in src else IP
        return Ether(src=mac(0x500), dst=mac(0x501)) / ip(src=src, dst=dst)

    a, b = "198.51.100.33", "198.51.100.34"
    up = lambda: e(a, b) / SCTP(sport=5000, dport=3868, tag=0x1111)
    down = lambda: e(b, a) / SCTP(sport=3868, dport=5000, tag=0x2222)
    f.append(e(a, b) / SCTP(sport=5000, dport=3868, tag=0) / SCTPChunkInit(init_tag=0x2222, a_rwnd=65535, n_out_streams=2, n_in_streams=2, init_tsn=1))
    f.append(down() / SCTPChunkInitAck(init_tag=0x1111, a_rwnd=65535, n_out_streams=2, n_in_streams=2, init_tsn=100))
    f.append(up() / SCTPChunkCookieEcho(cookie=b"c" * 32))
    f.append(down() / SCTPChunkCookieAck())
    for tsn in range(1, 4):
        f.append(up() / SCTPChunkData(tsn=tsn, stream_id=0, stream_seq=tsn - 1, data=b"d" * (100 * tsn)))
        f.append(down() / SCTPChunkSACK(cumul_tsn_ack=tsn, a_rwnd=65535))
    f.append(down() / SCTPChunkHeartbeatReq())
    f.append(up() / SCTPChunkHeartbeatAck())
    f.append(up() / SCTPChunkShutdown(cumul_tsn_ack=100))
    f.append(down() / SCTPChunkShutdownAck())
    f.append(up() / SCTPChunkShutdownComplete())
    a6, b6 = "2001:db8:5::1", "2001:db8:5::2"
    f.append(e(a6, b6) / SCTP(sport=5001, dport=2905, tag=0) / SCTPChunkInit(init_tag=0x3333, n_out_streams=1, n_in_streams=1, init_tsn=7))
    f.append(e(b6, a6) / SCTP(sport=2905, dport=5001, tag=0x3333) / SCTPChunkAbort())
    write("sctp.pcap", f)


def icmp():
    """ICMP and ICMPv6: echo requests and replies, unreachable and time-exceeded errors quoting
    the packet that caused them, timestamp request and reply, packet too big, neighbour
    solicitation and advertisement."""
    f = []

    def e(src, dst):
        ip = IPv6 if ":" in src else IP
        return Ether(src=mac(0x600), dst=mac(0x601)) / ip(src=src, dst=dst)

    a, b, r = "203.0.113.33", "203.0.113.34", "203.0.113.35"
    for seq in range(1, 4):
        f.append(e(a, b) / ICMP(type=8, id=77, seq=seq) / Raw(b"p" * 56))
        f.append(e(b, a) / ICMP(type=0, id=77, seq=seq) / Raw(b"p" * 56))
    f.append(e(a, b) / UDP(sport=45000, dport=33434) / Raw(b"q" * 20))
    f.append(e(b, a) / ICMP(type=3, code=3) / IP(src=a, dst=b) / UDP(sport=45000, dport=33434) / Raw(b"q" * 20))
    f.append(e(r, a) / ICMP(type=11, code=0) / IP(src=a, dst=b, ttl=0) / UDP(sport=45001, dport=33435))
    f.append(e(r, a) / ICMP(type=11, code=0) / IP(src=a, dst=b, ttl=0) / UDP(sport=45002, dport=33436))
    f.append(e(a, b) / ICMP(type=13, id=5))
    f.append(e(b, a) / ICMP(type=14, id=5))
    a6, b6, r6 = "2001:db8:6::1", "2001:db8:6::2", "2001:db8:6::ff"
    for seq in range(1, 3):
        f.append(e(a6, b6) / ICMPv6EchoRequest(id=88, seq=seq, data=b"P" * 56))
        f.append(e(b6, a6) / ICMPv6EchoReply(id=88, seq=seq, data=b"P" * 56))
    f.append(e(b6, a6) / ICMPv6DestUnreach(code=4) / IPv6(src=a6, dst=b6) / UDP(sport=45003, dport=33437))
    f.append(e(r6, a6) / ICMPv6PacketTooBig(mtu=1280) / IPv6(src=a6, dst=b6) / TCP(sport=45004, dport=443, flags="A") / Raw(b"T" * 200))
    f.append(Ether(src=mac(0x600), dst="33:33:ff:00:00:02") / IPv6(src=a6, dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt=b6))
    f.append(e(b6, a6) / ICMPv6ND_NA(tgt=b6, R=0, S=1, O=1))
    write("icmp.pcap", f)


def tunnels():
    """VXLAN (over IPv4 and IPv6), Geneve (Ethernet with an option, and IPv4 inside), GRE (with
    a key, with a checksum and IPv6 inside, and Ethernet inside) carrying conversations both
    ways; VTEPs .100-.111 of 192.0.2.0/24, inner ends in 198.51.100.128/26 and 2001:db8:7::."""
    f = []
    inner_mac = (mac(0x700), mac(0x701))

    def outer(src, dst):
        ip = IPv6 if ":" in src else IP
        return Ether(src=mac(0x7F0), dst=mac(0x7F1)) / ip(src=src, dst=dst)

    def inner_eth(src, dst):
        ip = IPv6 if ":" in src else IP
        forward = src < dst
        return Ether(src=inner_mac[0 if forward else 1], dst=inner_mac[1 if forward else 0]) / ip(src=src, dst=dst)

    def inner_ip(src, dst):
        return (IPv6 if ":" in src else IP)(src=src, dst=dst)

    def both_ways(wrap, a, b, make, count=3):
        for i in range(count):
            f.append(wrap(True, make(a, b, True, i)))
            f.append(wrap(False, make(b, a, False, i)))

    def udp_inner(head, sport, dport, size):
        def make(src, dst, forward, i):
            s, d = (sport, dport) if forward else (dport, sport)
            return head(src, dst) / UDP(sport=s, dport=d) / Raw(b"i" * (size + 10 * i))
        return make

    vteps = ("192.0.2.100", "192.0.2.101")

    def vxlan(vni, vtep_a, vtep_b):
        def wrap(forward, inner):
            src, dst = (vtep_a, vtep_b) if forward else (vtep_b, vtep_a)
            return outer(src, dst) / UDP(sport=49152 if forward else 49153, dport=4789) / VXLAN(vni=vni) / inner
        return wrap

    both_ways(vxlan(42, *vteps), "198.51.100.129", "198.51.100.130", udp_inner(inner_eth, 33333, 7000, 100))
    f += [vxlan(42, *vteps)(p[IP].src == "198.51.100.131", p) for p in
          tcp_session(inner_eth, "198.51.100.131", "198.51.100.132", 41001, 8000, b"ping", b"P" * 1000, mss=900)]
    both_ways(vxlan(43, "2001:db8:7:ffff::1", "2001:db8:7:ffff::2"), "198.51.100.133", "198.51.100.134", udp_inner(inner_eth, 33334, 7001, 60))
    # VXLAN carrying ARP: the outer flow only.
    f.append(vxlan(42, *vteps)(True, Ether(src=inner_mac[0], dst=BROADCAST) / ARP(psrc="198.51.100.129", pdst="198.51.100.130")))

    def geneve(vni, proto, options):
        def wrap(forward, inner):
            src, dst = ("192.0.2.102", "192.0.2.103") if forward else ("192.0.2.103", "192.0.2.102")
            return outer(src, dst) / UDP(sport=50000 if forward else 50001, dport=6081) / GENEVE(vni=vni, proto=proto, optionlen=len(options) // 4, options=options) / inner
        return wrap

    both_ways(geneve(7, 0x6558, b"\x01\x02\x03\x01\x00\x00\x00\x00"), "198.51.100.135", "198.51.100.136", udp_inner(inner_eth, 33335, 7002, 64))
    both_ways(geneve(8, 0x0800, b""), "198.51.100.137", "198.51.100.138", udp_inner(inner_ip, 33336, 7003, 64))

    def gre(vteps, **fields):
        def wrap(forward, inner):
            src, dst = vteps if forward else vteps[::-1]
            return outer(src, dst) / GRE(**fields) / inner
        return wrap

    both_ways(gre(("192.0.2.104", "192.0.2.105"), key_present=1, key=5, proto=0x0800), "198.51.100.139", "198.51.100.140", udp_inner(inner_ip, 33337, 7004, 64))
    both_ways(gre(("192.0.2.106", "192.0.2.107"), chksum_present=1, proto=0x86DD), "2001:db8:7::1", "2001:db8:7::2", udp_inner(inner_ip, 33338, 7005, 64))
    both_ways(gre(("192.0.2.108", "192.0.2.109"), key_present=1, key=9, proto=0x6558), "198.51.100.141", "198.51.100.142", udp_inner(inner_eth, 33339, 7006, 64))
    write("tunnels.pcap", f)


def ipv6_in_ipv4_and_udp():
    """IPv6 carried in IPv4 (protocol 41, 6in4/6to4) and in UDP (Teredo, port 3544), both ways."""
    f = []

    def e(src, dst, proto=None):
        ip = IP(src=src, dst=dst) if proto is None else IP(src=src, dst=dst, proto=proto)
        return Ether(src=mac(0x800), dst=mac(0x801)) / ip

    a6, b6 = "2001:db8:8::1", "2001:db8:8::2"
    for i in range(3):
        f.append(e("192.0.2.200", "192.0.2.201") / IPv6(src=a6, dst=b6) / UDP(sport=35000, dport=7100) / Raw(b"6" * (40 + i)))
        f.append(e("192.0.2.201", "192.0.2.200") / IPv6(src=b6, dst=a6) / UDP(sport=7100, dport=35000) / Raw(b"6" * 80))
    for i in range(2):
        f.append(e("192.0.2.202", "192.0.2.203") / UDP(sport=35001, dport=3544) / IPv6(src=a6, dst=b6) / UDP(sport=35002, dport=7101) / Raw(b"t" * 30))
        f.append(e("192.0.2.203", "192.0.2.202") / UDP(sport=3544, dport=35001) / IPv6(src=b6, dst=a6) / UDP(sport=7101, dport=35002) / Raw(b"t" * 60))
    write("ipv6_in_ipv4_and_udp.pcap", f)


def malformed():
    """A UDP conversation interleaved with frames whose network header is cut short or
    invalid (IPv4 and IPv6), frames ending inside the UDP or TCP header, and frames that end
    right after the Ethernet header."""
    a, b = "192.0.2.241", "192.0.2.242"
    eth = Ether(src=mac(0x900), dst=mac(0x901))
    good = [eth / IP(src=a, dst=b) / UDP(sport=5000, dport=6000) / Raw(b"g" * 64),
            eth / IP(src=b, dst=a) / UDP(sport=6000, dport=5000) / Raw(b"g" * 32)]
    ipv4 = raw(eth / IP(src="192.0.2.243", dst="192.0.2.244") / UDP(sport=5001, dport=6001) / Raw(b"m" * 20))
    ipv6 = raw(Ether(src=mac(0x900), dst=mac(0x901)) / IPv6(src="2001:db8:9::1", dst="2001:db8:9::2") / UDP(sport=5002, dport=6002) / Raw(b"m" * 20))
    tcp = raw(eth / IP(src="192.0.2.245", dst="192.0.2.246") / TCP(sport=5003, dport=6003, flags="S"))
    bad_ihl = bytearray(ipv4)
    bad_ihl[14] = 0x43
    bad_version = bytearray(ipv4)
    bad_version[14] = 0x65
    v4_in_v6 = bytearray(ipv6)
    v4_in_v6[14] = 0x45
    broken = [
        ipv4[:14 + 10],          # IPv4 header cut after 10 bytes
        bytes(bad_ihl),          # IHL 3 (12 bytes): less than the 20-byte minimum
        bytes(bad_version),      # version 6 under EtherType IPv4
        ipv6[:14 + 30],          # IPv6 header cut after 30 bytes
        bytes(v4_in_v6),         # version 4 under EtherType IPv6
        ipv4[:14],               # EtherType IPv4, nothing after the Ethernet header
    ]
    truncated = [
        ipv4[:14 + 20 + 4],      # UDP header cut after the ports
        tcp[:14 + 20 + 8],       # TCP header cut after the sequence number
    ]
    f = []
    for i in range(6):
        f += [good[0], Ether(broken[i]), good[1]]
    f += [Ether(t) for t in truncated]
    write("malformed.pcap", f)


if __name__ == "__main__":
    mirror()
    vlans()
    ipv4_fragments()
    ipv6_extension_headers()
    sctp()
    icmp()
    tunnels()
    ipv6_in_ipv4_and_udp()
    malformed()
