/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the
 * Free Software Foundation; either version 2 of the License, or (at your
 * option) any later version. See ../COPYING.
 */

/*
 * The Internet checksum (RFC 1071) is summed here in the host's byte order:
 * the one's complement sum does not depend on it, as long as every value
 * added is in its memory (network) representation and the folded result is
 * stored back as it is.
 */

#include "kernel_dataplane_offload.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#define IPV4_HEADER_LEN 20
#define IPV6_HEADER_LEN 40
#define TCP_HEADER_LEN 20
/** Offset of the checksum in the TCP header. */
#define TCP_CSUM_OFFSET 16

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80

static uint16_t load16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof(v));
	return ntohs(v);
}

static void store16(uint8_t *p, uint16_t v)
{
	v = htons(v);
	memcpy(p, &v, sizeof(v));
}

static uint32_t load32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return ntohl(v);
}

static void store32(uint8_t *p, uint32_t v)
{
	v = htonl(v);
	memcpy(p, &v, sizeof(v));
}

/** Adds `len` bytes at `data` (starting at an even offset of the checksummed
 * range) to a running sum. */
static uint64_t csum_add(uint64_t sum, const uint8_t *data, size_t len)
{
	uint32_t word;
	uint16_t half = 0;

	while (len >= 4)
	{
		memcpy(&word, data, 4);
		sum += word;
		data += 4;
		len -= 4;
	}
	if (len >= 2)
	{
		memcpy(&half, data, 2);
		sum += half;
		data += 2;
		len -= 2;
	}
	if (len)
	{
		half = 0;
		memcpy(&half, data, 1);
		sum += half;
	}
	return sum;
}

/** Adds a 16-bit value given in host order (as it appears on the wire). */
static uint64_t csum_add16(uint64_t sum, uint16_t value)
{
	return sum + htons(value);
}

/** Folds a running sum to 16 bits (not complemented), in memory order. */
static uint16_t csum_fold(uint64_t sum)
{
	while (sum >> 16)
	{
		sum = (sum & 0xffff) + (sum >> 16);
	}
	return (uint16_t)sum;
}

/** Sum of the TCP pseudo-header of an IPv4 or IPv6 packet. */
static uint64_t pseudo_header(const uint8_t *packet, bool ipv6, size_t tcp_bytes)
{
	uint64_t sum;

	if (ipv6)
	{
		sum = csum_add(0, packet + 8, 32);
		sum += htonl((uint32_t)tcp_bytes);
	}
	else
	{
		sum = csum_add(0, packet + 12, 8);
		sum = csum_add16(sum, (uint16_t)tcp_bytes);
	}
	return csum_add16(sum, IPPROTO_TCP);
}

static void ipv4_header_csum(uint8_t *packet, size_t ip_len)
{
	uint16_t csum;

	memset(packet + 10, 0, 2);
	csum = (uint16_t)~csum_fold(csum_add(0, packet, ip_len));
	memcpy(packet + 10, &csum, 2);
}

bool dataplane_csum_complete(const struct virtio_net_hdr *vnet,
							 uint8_t *packet, size_t len)
{
	size_t start = vnet->csum_start, field = start + vnet->csum_offset;
	uint16_t csum;

	if (start >= len || field + 2 > len || (start & 1))
	{
		return false;
	}
	csum = (uint16_t)~csum_fold(csum_add(0, packet + start, len - start));
	/* as the kernel does: a sum of 0 goes out as 0xffff (for UDP, 0 would
	 * mean "no checksum"; for TCP both are the same) */
	if (csum == 0)
	{
		csum = 0xffff;
	}
	memcpy(packet + field, &csum, 2);
	return true;
}

/**
 * Header lengths of a TCP packet the functions handle: IPv4 without
 * fragmentation, IPv6 without extension headers, the IP length matching
 * `len`.
 *
 * @return		FALSE for anything else
 */
static bool tcp_layout(const uint8_t *packet, size_t len, bool options_ok,
					   size_t *ip_len, size_t *tcp_len, bool *ipv6)
{
	if (len < IPV4_HEADER_LEN)
	{
		return false;
	}
	switch (packet[0] >> 4)
	{
		case 4:
			*ipv6 = false;
			*ip_len = (packet[0] & 0x0f) * 4;
			if (*ip_len < IPV4_HEADER_LEN ||
				(*ip_len > IPV4_HEADER_LEN && !options_ok) ||
				packet[9] != IPPROTO_TCP || load16(packet + 2) != len ||
				(load16(packet + 6) & 0x3fff) != 0)
			{	/* options, not TCP, another length, a fragment */
				return false;
			}
			break;
		case 6:
			*ipv6 = true;
			*ip_len = IPV6_HEADER_LEN;
			if (len < IPV6_HEADER_LEN || packet[6] != IPPROTO_TCP ||
				(size_t)load16(packet + 4) + IPV6_HEADER_LEN != len)
			{
				return false;
			}
			break;
		default:
			return false;
	}
	if (*ip_len + TCP_HEADER_LEN > len)
	{
		return false;
	}
	*tcp_len = (packet[*ip_len + 12] >> 4) * 4;
	return *tcp_len >= TCP_HEADER_LEN && *ip_len + *tcp_len <= len;
}

/** TRUE when the TCP checksum of a packet whose layout tcp_layout() read
 * (IPv4 without fragmentation, IPv6 without extension headers) is right. */
static bool tcp_csum_ok(const uint8_t *packet, size_t len, size_t ip_len,
						bool ipv6)
{
	uint64_t sum;

	sum = pseudo_header(packet, ipv6, len - ip_len);
	sum = csum_add(sum, packet + ip_len, len - ip_len);
	return csum_fold(sum) == 0xffff;
}


unsigned dataplane_tso_prepare(dataplane_tso_t *tso,
							   const struct virtio_net_hdr *vnet,
							   const uint8_t *packet, size_t len)
{
	uint8_t type = vnet->gso_type & ~VIRTIO_NET_HDR_GSO_ECN;
	bool ipv6;

	if ((type != VIRTIO_NET_HDR_GSO_TCPV4 && type != VIRTIO_NET_HDR_GSO_TCPV6) ||
		!tcp_layout(packet, len, true, &tso->ip_len, &tso->tcp_len, &ipv6) ||
		ipv6 != (type == VIRTIO_NET_HDR_GSO_TCPV6) || vnet->gso_size == 0)
	{
		return 0;
	}
	tso->ipv6 = ipv6;
	tso->mss = vnet->gso_size;
	tso->payload = len - tso->ip_len - tso->tcp_len;
	if (tso->payload == 0)
	{
		return 0;
	}
	tso->segments = (tso->payload + tso->mss - 1) / tso->mss;
	return tso->segments;
}

size_t dataplane_tso_segment(const dataplane_tso_t *tso,
							 const uint8_t *packet, unsigned index,
							 uint8_t *out)
{
	size_t headers = tso->ip_len + tso->tcp_len;
	size_t from = (size_t)index * tso->mss;
	size_t payload = tso->payload - from < tso->mss ? tso->payload - from
													: tso->mss;
	size_t len = headers + payload;
	uint8_t *tcp = out + tso->ip_len;
	uint16_t csum;
	uint64_t sum;

	memcpy(out, packet, headers);
	memcpy(out + headers, packet + headers + from, payload);
	if (tso->ipv6)
	{
		store16(out + 4, (uint16_t)(len - IPV6_HEADER_LEN));
	}
	else
	{
		store16(out + 2, (uint16_t)len);
		store16(out + 4, (uint16_t)(load16(packet + 4) + index));
		ipv4_header_csum(out, tso->ip_len);
	}
	store32(tcp + 4, load32(packet + tso->ip_len + 4) + (uint32_t)from);
	if (index + 1 < tso->segments)
	{
		tcp[13] &= ~(TCP_FIN | TCP_PSH);
	}
	if (index > 0)
	{
		tcp[13] &= ~TCP_CWR;
	}
	memset(tcp + TCP_CSUM_OFFSET, 0, 2);
	sum = pseudo_header(out, tso->ipv6, len - tso->ip_len);
	sum = csum_add(sum, tcp, len - tso->ip_len);
	csum = (uint16_t)~csum_fold(sum);
	memcpy(tcp + TCP_CSUM_OFFSET, &csum, 2);
	return len;
}

bool dataplane_gro_init(dataplane_gro_t *gro)
{
	memset(gro, 0, sizeof(*gro));
	gro->frame = malloc(DATAPLANE_VNET_HDR_LEN + DATAPLANE_MAX_IP_PACKET);
	return gro->frame != NULL;
}

void dataplane_gro_free(dataplane_gro_t *gro)
{
	free(gro->frame);
	gro->frame = NULL;
	gro->len = 0;
}

/** The IP header fields that must be equal for two segments to merge
 * (lengths, IDs and the IPv4 checksum aside). */
static bool same_ip_header(const uint8_t *a, const uint8_t *b, bool ipv6)
{
	if (ipv6)
	{	/* version, traffic class, flow label; next header, hop limit;
		 * addresses */
		return memcmp(a, b, 4) == 0 && memcmp(a + 6, b + 6, 34) == 0;
	}
	/* version/IHL, TOS; flags (DF); TTL, protocol; addresses */
	return memcmp(a, b, 2) == 0 && a[6] == b[6] && memcmp(a + 8, b + 8, 2) == 0 &&
		   memcmp(a + 12, b + 12, 8) == 0;
}

dataplane_gro_verdict_t dataplane_gro_add(dataplane_gro_t *gro,
										  const uint8_t *packet, size_t len)
{
	size_t ip_len, tcp_len, payload;
	const uint8_t *tcp;
	uint8_t *held = gro->frame + DATAPLANE_VNET_HDR_LEN;
	bool ipv6;

	if (!tcp_layout(packet, len, false, &ip_len, &tcp_len, &ipv6))
	{
		return DATAPLANE_GRO_BYPASS;
	}
	tcp = packet + ip_len;
	payload = len - ip_len - tcp_len;
	if (payload == 0 || (tcp[13] & ~TCP_PSH) != TCP_ACK ||
		!tcp_csum_ok(packet, len, ip_len, ipv6))
	{	/* pure ACKs, SYN, FIN, RST, URG, ECE/CWR: as they came */
		return DATAPLANE_GRO_BYPASS;
	}
	if (gro->len == 0)
	{
		memcpy(held, packet, len);
		gro->len = len;
		gro->ip_len = ip_len;
		gro->tcp_len = tcp_len;
		gro->mss = payload;
		gro->segments = 1;
		gro->next_seq = load32(tcp + 4) + (uint32_t)payload;
		gro->closed = (tcp[13] & TCP_PSH) != 0;
		return DATAPLANE_GRO_HELD;
	}
	if (gro->closed || gro->segments >= DATAPLANE_GRO_MAX_SEGMENTS ||
		ip_len != gro->ip_len || tcp_len != gro->tcp_len ||
		payload > gro->mss || gro->len + payload > DATAPLANE_MAX_IP_PACKET ||
		ipv6 != (held[0] >> 4 == 6) || !same_ip_header(held, packet, ipv6) ||
		load32(tcp + 4) != gro->next_seq ||
		/* ports; acknowledgment number; window; options */
		memcmp(held + ip_len, tcp, 4) != 0 ||
		memcmp(held + ip_len + 8, tcp + 8, 4) != 0 ||
		memcmp(held + ip_len + 14, tcp + 14, 2) != 0 ||
		memcmp(held + ip_len + TCP_HEADER_LEN, tcp + TCP_HEADER_LEN,
			   tcp_len - TCP_HEADER_LEN) != 0)
	{
		return DATAPLANE_GRO_FLUSH_FIRST;
	}
	memcpy(held + gro->len, packet + ip_len + tcp_len, payload);
	gro->len += payload;
	gro->segments++;
	gro->next_seq += (uint32_t)payload;
	held[ip_len + 13] |= tcp[13] & TCP_PSH;
	gro->closed = payload < gro->mss || (tcp[13] & TCP_PSH);
	return DATAPLANE_GRO_HELD;
}

size_t dataplane_gro_flush(dataplane_gro_t *gro, const uint8_t **frame)
{
	struct virtio_net_hdr vnet;
	uint8_t *held = gro->frame + DATAPLANE_VNET_HDR_LEN;
	size_t len = gro->len;
	uint16_t csum;
	bool ipv6;

	if (len == 0)
	{
		return 0;
	}
	memset(&vnet, 0, sizeof(vnet));
	if (gro->segments > 1)
	{
		ipv6 = held[0] >> 4 == 6;
		if (ipv6)
		{
			store16(held + 4, (uint16_t)(len - IPV6_HEADER_LEN));
		}
		else
		{
			store16(held + 2, (uint16_t)len);
			ipv4_header_csum(held, gro->ip_len);
		}
		/* what the kernel's TCP puts there for a partial checksum: the
		 * pseudo-header sum over the whole TCP length, not complemented */
		csum = csum_fold(pseudo_header(held, ipv6, len - gro->ip_len));
		memcpy(held + gro->ip_len + TCP_CSUM_OFFSET, &csum, 2);
		vnet.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
		vnet.gso_type = ipv6 ? VIRTIO_NET_HDR_GSO_TCPV6
							 : VIRTIO_NET_HDR_GSO_TCPV4;
		vnet.hdr_len = (uint16_t)(gro->ip_len + gro->tcp_len);
		vnet.gso_size = (uint16_t)gro->mss;
		vnet.csum_start = (uint16_t)gro->ip_len;
		vnet.csum_offset = TCP_CSUM_OFFSET;
	}
	memcpy(gro->frame, &vnet, sizeof(vnet));
	*frame = gro->frame;
	gro->len = 0;
	gro->segments = 0;
	return DATAPLANE_VNET_HDR_LEN + len;
}
