/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the
 * Free Software Foundation; either version 2 of the License, or (at your
 * option) any later version. See ../COPYING.
 */

/**
 * TCP segmentation and coalescing for a TUN device with offloads
 * (IFF_VNET_HDR, TUNSETOFFLOAD TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6).
 *
 * With offloads on, the host hands the TUN reader whole TCP send bursts of up
 * to 64 KiB (one read instead of ~45) and takes coalesced TCP segments in
 * one write: the per-packet work of the kernel (forwarding, the TUN read or
 * write, a syscall each) happens once per burst. The data path cuts such a
 * burst into segments here (what the kernel's TSO would do, as a NIC does)
 * and encrypts each, and it merges decrypted segments of one TCP stream
 * (what the kernel's GRO does) before writing them.
 *
 * Pure functions on byte buffers, no strongSwan types, so that they can be
 * tested alone. Every length is checked; a frame that is not what the
 * functions expect is refused, never read past its end.
 */

#ifndef KERNEL_DATAPLANE_OFFLOAD_H_
#define KERNEL_DATAPLANE_OFFLOAD_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <linux/virtio_net.h>

/** Bytes of the header in front of every frame of a TUN device with
 * IFF_VNET_HDR (the default TUNSETVNETHDRSZ). */
#define DATAPLANE_VNET_HDR_LEN sizeof(struct virtio_net_hdr)

/** Largest IP packet a TUN device reads or writes. */
#define DATAPLANE_MAX_IP_PACKET 65535

/** Most segments merged into one write (the kernel's GRO stops at 64 too). */
#define DATAPLANE_GRO_MAX_SEGMENTS 64

/**
 * Completes the checksum of a packet the kernel handed over with
 * VIRTIO_NET_HDR_F_NEEDS_CSUM (the checksum field holds the pseudo-header
 * sum; the sum from csum_start to the end goes in).
 *
 * @return		FALSE when csum_start/csum_offset lie outside the packet
 */
bool dataplane_csum_complete(const struct virtio_net_hdr *vnet,
							 uint8_t *packet, size_t len);

/**
 * A TCP send burst (GSO frame) read from the TUN device, to be cut into
 * segments of `mss` payload bytes.
 */
typedef struct {
	/** IP header bytes (IPv4 with options, or 40). */
	size_t ip_len;
	/** TCP header bytes, options included. */
	size_t tcp_len;
	/** Payload bytes of the whole burst. */
	size_t payload;
	/** Payload bytes per segment (gso_size). */
	size_t mss;
	/** Number of segments. */
	unsigned segments;
	/** TRUE for IPv6. */
	bool ipv6;
} dataplane_tso_t;

/**
 * Checks a GSO frame (gso_type TCPV4 or TCPV6) and fills `tso`.
 *
 * @return		number of segments, 0 when the frame is malformed or not TCP
 */
unsigned dataplane_tso_prepare(dataplane_tso_t *tso,
							   const struct virtio_net_hdr *vnet,
							   const uint8_t *packet, size_t len);

/**
 * Writes segment `index` of a prepared burst to `out` (room for ip_len +
 * tcp_len + mss bytes): headers with their lengths, IPv4 ID, sequence
 * number, flags (FIN and PSH on the last segment only, CWR on the first)
 * and checksums set, as the kernel's TSO writes them.
 *
 * @return		the segment's length
 */
size_t dataplane_tso_segment(const dataplane_tso_t *tso,
							 const uint8_t *packet, unsigned index,
							 uint8_t *out);

/**
 * Decrypted TCP segments of one stream being merged into one frame for the
 * TUN device.
 */
typedef struct {
	/** The frame: virtio_net_hdr, then the merged packet (owned). */
	uint8_t *frame;
	/** Packet bytes so far (0: nothing held). */
	size_t len;
	/** Header bytes of the held packet. */
	size_t ip_len, tcp_len;
	/** Payload bytes of the first segment: every other but the last has
	 * as many. */
	size_t mss;
	/** Segments merged. */
	unsigned segments;
	/** Sequence number the next segment must have (host order). */
	uint32_t next_seq;
	/** A short segment or a PSH ended the stream: nothing more merges. */
	bool closed;
} dataplane_gro_t;

/** What dataplane_gro_add() did with a packet. */
typedef enum {
	/** Held or merged: the caller keeps nothing. */
	DATAPLANE_GRO_HELD,
	/** Does not merge with what is held: flush, then add it again. */
	DATAPLANE_GRO_FLUSH_FIRST,
	/** Not a packet that merges (not TCP, flags, bad checksum, ...): flush
	 * what is held, then write the packet as it is. */
	DATAPLANE_GRO_BYPASS,
} dataplane_gro_verdict_t;

/**
 * Allocates the frame buffer.
 *
 * @return		FALSE when out of memory
 */
bool dataplane_gro_init(dataplane_gro_t *gro);

/** Frees the frame buffer. */
void dataplane_gro_free(dataplane_gro_t *gro);

/**
 * Offers one decrypted IP packet. Only TCP segments with payload, only ACK
 * (and PSH) set and a checksum that verifies merge: a segment with a bad
 * checksum is written as it came, so that the receiver drops it, rather
 * than given a fresh checksum with the rest.
 */
dataplane_gro_verdict_t dataplane_gro_add(dataplane_gro_t *gro,
										  const uint8_t *packet, size_t len);

/**
 * Finishes what is held: for several segments the merged headers, the TCP
 * pseudo-header checksum and a virtio_net_hdr asking for segmentation
 * (gso_size = the first segment's payload) and checksum completion; one
 * segment goes out unchanged. Empties `gro`.
 *
 * @return		the frame and its length (virtio_net_hdr included), or 0
 *				when nothing was held
 */
size_t dataplane_gro_flush(dataplane_gro_t *gro, const uint8_t **frame);

#endif /** KERNEL_DATAPLANE_OFFLOAD_H_ */
