/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the
 * Free Software Foundation; either version 2 of the License, or (at your
 * option) any later version. See ../COPYING.
 */

/*
 * The packets, both ways:
 *
 * Outbound: the host routes traffic for the remote selectors into the TUN
 * device (kernel_dataplane_ipsec.c installs the routes). A job on charon's
 * thread pool reads from the device straight into a buffer with headroom
 * and tailroom (no copy). With the TUN offloads (kernel_dataplane_tun.h) a
 * read is a whole TCP send burst of up to 64 KiB; the job cuts it into
 * segments (kernel_dataplane_offload.h), as TSO would, into buffers of
 * their own. Each packet goes through ipsec_gateway_outbound, a batch under
 * one lock. For the plugin's SAs (tunnel mode, ESP in UDP) the library
 * writes the whole wire packet: outer IPv4/IPv6 header + UDP header + ESP.
 * charon's socket wants the UDP payload only, so the data path sends the
 * ESP from and to the SA's endpoints on charon's own NAT-T socket, from the
 * reader's thread: the ESP packets of one burst (same SA, same size but the
 * last) in ONE sendmsg() with UDP_SEGMENT, so the kernel's stack runs once
 * per burst and the device (or the NIC) cuts the packets. socket-default
 * shows no descriptor; the data path finds the socket bound to the SA's
 * port in /proc/self/fd and falls back to charon->socket->send (what
 * charon's sender does with a packet queued by send_no_marker, without
 * waking that thread) when it cannot. Like send_no_marker it adds no
 * non-ESP marker: this is ESP. ESP packets carry DSCP 0, as IKE packets do
 * unless a connection sets `dscp`.
 *
 * Inbound: charon's receiver hands ESP that arrived on its NAT-T socket to
 * the ESP callback as a UDP payload (SPI first) with the addresses and
 * ports. ipsec_gateway_inbound wants a whole IP packet; the data path puts
 * an outer IPv4/IPv6 header naming ESP (protocol 50) in front: the library
 * recognises ESP in UDP only on port 4500, plain ESP on any, and the SAs are
 * found by SPI, so plain ESP works whatever NAT-T port charon uses. The
 * decrypted inner packet goes to the TUN device; the host delivers or
 * forwards it. With the offloads, TCP segments of one stream are held and
 * merged (GRO) while the next datagram waiting on charon's socket is ESP
 * (a peek, no timer), and written as one frame the host forwards at once.
 *
 * Every drop is counted (kernel_dataplane_gateway_t.counters, and the
 * library's own per-SA and gateway counters) and logged at level 2; a
 * malformed packet never stops the data path.
 */

/* struct in6_pktinfo */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "kernel_dataplane_router.h"
#include "kernel_dataplane_offload.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <daemon.h>
#include <networking/packet.h>
#include <processing/jobs/callback_job.h>
#include <threading/thread.h>
#include <utils/debug.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

/** Headroom before a cleartext packet: outer IPv6 (40) + UDP (8) + ESP
 * header (8) + IV (16), rounded up. */
#define OUTBOUND_HEADROOM 128
/** Tailroom after it: TFC padding up to a 64 KiB packet, ESP padding (up
 * to 255), pad length, next header and ICV (16). */
#define OUTBOUND_TAILROOM (65535 + 512)
/** Largest IP packet the TUN device hands us. */
#define MAX_IP_PACKET DATAPLANE_MAX_IP_PACKET

/** Segments of a TCP burst encrypted, and sent, together. */
#define BATCH 64u
/** Largest segment (headers and payload) cut from a burst: a jumbo frame. */
#define SEGMENT_MAX 9216
/** A segment's buffer: headroom, the segment, ESP padding and trailer, ICV
 * (TFC padding beyond the segment's buffer fails, counted on the SA). */
#define SEGMENT_SLOT (OUTBOUND_HEADROOM + SEGMENT_MAX + 512)
/** What one UDP GSO send may carry: the kernel's limits (64 segments
 * before Linux 6.9, a UDP datagram's 65,507 bytes for IPv4). */
#define MAX_UDP_GSO_SEGMENTS 64
#define MAX_UDP_GSO_BYTES 65000

#define IPV4_HEADER_LEN 20
#define IPV6_HEADER_LEN 40
#define UDP_HEADER_LEN 8

/**
 * charon's UDP sockets for one port, IPv4 ([0]) and IPv6 ([1]), as the
 * data path found them (find_udp_socket()).
 */
typedef struct {
	int fd[2];
	uint16_t port[2];
	/** When they were last looked for (seconds, monotonic). */
	time_t looked[2];
} socket_cache_t;

typedef struct private_kernel_dataplane_router_t private_kernel_dataplane_router_t;

struct private_kernel_dataplane_router_t {

	/** Public interface. */
	kernel_dataplane_router_t public;

	/** The plugin's shared state. */
	kernel_dataplane_gateway_t *gw;

	/** The outbound buffer: only the TUN reader job uses it (one job, so
	 * one thread at a time), as it does every field up to `udp_gso`. */
	uint8_t *outbound_buffer;
	size_t outbound_capacity;

	/** BATCH buffers of SEGMENT_SLOT bytes for the segments of a burst. */
	uint8_t *segments;

	/** charon's sockets the reader sends ESP on. */
	socket_cache_t send_sockets;

	/** FALSE once the kernel refused a UDP GSO send. */
	bool udp_gso;

	/** The inbound buffer (outer IP header + ESP): only charon's receiver
	 * thread uses it (it calls receive_esp() under its own lock), as it
	 * does the fields below. */
	uint8_t *inbound_buffer;

	/** Decrypted TCP segments held to go to the TUN device in one write. */
	dataplane_gro_t gro;

	/** charon's sockets ESP arrives on (to see whether more is waiting). */
	socket_cache_t receive_sockets;
};

/** When the data path last polled the library's lifetime events (seconds,
 * monotonic; under gw->mutex). */
static time_t last_event_poll = 0;

typedef struct {
	uint32_t spi;
	host_t *dst;
	bool hard;
} expire_event_t;

void kernel_dataplane_poll_events(kernel_dataplane_gateway_t *gw, bool now)
{
	expire_event_t events[16];
	ipsec_gateway_event event;
	dataplane_sa_t *sa;
	time_t this_second = time_monotonic(NULL);
	int count = 0, i;

	gw->mutex->lock(gw->mutex);
	if (!now && this_second == last_event_poll)
	{
		/* the library's poll looks at every SA: once a second is enough
		 * for soft limits set with a usual margin (charon's default is
		 * 10%); a packet refused for an expired SA polls at once */
		gw->mutex->unlock(gw->mutex);
		return;
	}
	last_event_poll = this_second;
	while (count < (int)countof(events) &&
		   ipsec_gateway_poll_event(gw->gateway, dataplane_now_ns(),
									&event) == IPSEC_OK &&
		   event.event.kind != IPSEC_EVENT_NONE)
	{
		sa = gw->sas->get(gw->sas, event.sa);
		if (sa)
		{
			events[count].spi = sa->spi;
			events[count].dst = sa->dst->clone(sa->dst);
			events[count].hard = event.event.kind == IPSEC_EVENT_EXPIRED;
			count++;
		}
	}
	gw->mutex->unlock(gw->mutex);

	/* charon->kernel->expire queues a rekey or delete job; it may call back
	 * into the plugin, so it runs without our lock */
	for (i = 0; i < count; i++)
	{
		DBG1(DBG_KNL, "kernel-dataplane: %s lifetime of SA %.8x reached",
			 events[i].hard ? "hard" : "soft", ntohl(events[i].spi));
		charon->kernel->expire(charon->kernel, IPPROTO_ESP, events[i].spi,
							   events[i].dst, events[i].hard);
		events[i].dst->destroy(events[i].dst);
	}
}

/**
 * Finds where the ESP header starts in the wire packet the library wrote
 * (outer IPv4 or IPv6 header, then UDP for ESP in UDP, or ESP directly).
 *
 * @return		offset of the SPI, 0 when the packet is not such a packet
 */
static size_t esp_offset(const uint8_t *packet, size_t len)
{
	size_t header_len;
	uint8_t protocol;

	if (len < 1)
	{
		return 0;
	}
	switch (packet[0] >> 4)
	{
		case 4:
			if (len < IPV4_HEADER_LEN)
			{
				return 0;
			}
			header_len = (packet[0] & 0x0f) * 4;
			protocol = packet[9];
			break;
		case 6:
			/* the library writes no extension headers in front of ESP */
			header_len = IPV6_HEADER_LEN;
			if (len < header_len)
			{
				return 0;
			}
			protocol = packet[6];
			break;
		default:
			return 0;
	}
	if (protocol == IPPROTO_UDP)
	{
		header_len += UDP_HEADER_LEN;
	}
	else if (protocol != IPPROTO_ESP)
	{
		return 0;
	}
	/* at least an SPI and a sequence number */
	return header_len + 8 <= len ? header_len : 0;
}

/**
 * Finds the UDP socket charon's socket plugin bound to `port` for `family`
 * (socket-default keeps an IPv4 and an IPv6 socket per port and shows no
 * descriptor): the data path sends batches of ESP on it with one sendmsg()
 * and looks whether more ESP waits on it. Only sockets of the daemon
 * itself are looked at (/proc/self/fd).
 *
 * @return		the descriptor, -1 when there is none
 */
static int find_udp_socket(int family, uint16_t port)
{
	struct sockaddr_storage addr;
	socklen_t addr_len, opt_len;
	struct dirent *entry;
	int fd, type, protocol, found = -1;
	DIR *dir;

	dir = opendir("/proc/self/fd");
	if (!dir)
	{
		return -1;
	}
	while (found < 0 && (entry = readdir(dir)) != NULL)
	{
		if (entry->d_name[0] < '0' || entry->d_name[0] > '9')
		{
			continue;
		}
		fd = atoi(entry->d_name);
		opt_len = sizeof(type);
		if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &opt_len) < 0 ||
			type != SOCK_DGRAM)
		{
			continue;
		}
		opt_len = sizeof(protocol);
		addr_len = sizeof(addr);
		if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &opt_len) < 0 ||
			protocol != IPPROTO_UDP ||
			getsockname(fd, (struct sockaddr*)&addr, &addr_len) < 0 ||
			addr.ss_family != family)
		{
			continue;
		}
		if ((family == AF_INET &&
			 ntohs(((struct sockaddr_in*)&addr)->sin_port) == port) ||
			(family == AF_INET6 &&
			 ntohs(((struct sockaddr_in6*)&addr)->sin6_port) == port))
		{
			found = fd;
		}
	}
	closedir(dir);
	return found;
}

/**
 * The socket to send from or look at for `family` and `port`: found once,
 * looked for again at most once a second while there is none.
 */
static int udp_socket(socket_cache_t *cache, int family, uint16_t port)
{
	int i = family == AF_INET6;
	time_t now;

	if (cache->fd[i] >= 0 && cache->port[i] == port)
	{
		return cache->fd[i];
	}
	now = time_monotonic(NULL);
	if (cache->port[i] == port && cache->looked[i] == now)
	{
		return -1;
	}
	cache->looked[i] = now;
	cache->port[i] = port;
	cache->fd[i] = find_udp_socket(family, port);
	return cache->fd[i];
}

/**
 * Sends one ESP packet (UDP payload) the way charon's sender would.
 */
static void send_via_charon(host_t *src, host_t *dst, uint8_t *esp, size_t len)
{
	packet_t *packet;

	/* packet_create_from_data takes the hosts and the data */
	packet = packet_create_from_data(src->clone(src), dst->clone(dst),
									 chunk_clone(chunk_create(esp, len)));
	/* a failed send is logged by the socket (as for the sender's packets) */
	charon->socket->send(charon->socket, packet);
	packet->destroy(packet);
}

/**
 * Sends `count` ESP packets (UDP payloads in `iov`) from `src` to `dst` on
 * charon's socket with one sendmsg(): as one UDP GSO send (UDP_SEGMENT:
 * every packet `segment` bytes but the last, which may be shorter) when
 * there are several, the source address given with IP(V6)_PKTINFO as
 * socket-default gives it.
 *
 * @return		FALSE when the caller should send them one by one instead
 */
static bool send_batch(private_kernel_dataplane_router_t *this, host_t *src,
					   host_t *dst, struct iovec *iov, unsigned count,
					   size_t segment)
{
	union {
		char buf[CMSG_SPACE(sizeof(struct in6_pktinfo)) +
				 CMSG_SPACE(sizeof(uint16_t))];
		struct cmsghdr align;
	} control;
	struct msghdr msg = {
		.msg_name = dst->get_sockaddr(dst),
		.msg_namelen = *dst->get_sockaddr_len(dst),
		.msg_iov = iov,
		.msg_iovlen = count,
		.msg_control = control.buf,
	};
	struct cmsghdr *cmsg;
	struct in_pktinfo *pktinfo;
	struct in6_pktinfo *pktinfo6;
	uint16_t gso_size = segment;
	size_t control_len;
	int family = dst->get_family(dst), fd;

	if (count > 1 && !this->udp_gso)
	{
		return FALSE;
	}
	fd = udp_socket(&this->send_sockets, family, src->get_port(src));
	if (fd < 0)
	{
		return FALSE;
	}
	memset(&control, 0, sizeof(control));
	msg.msg_controllen = sizeof(control.buf);
	cmsg = CMSG_FIRSTHDR(&msg);
	if (family == AF_INET)
	{
		cmsg->cmsg_level = SOL_IP;
		cmsg->cmsg_type = IP_PKTINFO;
		cmsg->cmsg_len = CMSG_LEN(sizeof(*pktinfo));
		pktinfo = (struct in_pktinfo*)CMSG_DATA(cmsg);
		pktinfo->ipi_spec_dst =
					((struct sockaddr_in*)src->get_sockaddr(src))->sin_addr;
	}
	else
	{
		cmsg->cmsg_level = SOL_IPV6;
		cmsg->cmsg_type = IPV6_PKTINFO;
		cmsg->cmsg_len = CMSG_LEN(sizeof(*pktinfo6));
		pktinfo6 = (struct in6_pktinfo*)CMSG_DATA(cmsg);
		pktinfo6->ipi6_addr =
					((struct sockaddr_in6*)src->get_sockaddr(src))->sin6_addr;
	}
	control_len = CMSG_SPACE(cmsg->cmsg_len - CMSG_LEN(0));
	if (count > 1)
	{	/* msg_controllen still covers the whole buffer here, as
		 * CMSG_NXTHDR wants it */
		cmsg = CMSG_NXTHDR(&msg, cmsg);
		cmsg->cmsg_level = SOL_UDP;
		cmsg->cmsg_type = UDP_SEGMENT;
		cmsg->cmsg_len = CMSG_LEN(sizeof(gso_size));
		memcpy(CMSG_DATA(cmsg), &gso_size, sizeof(gso_size));
		control_len += CMSG_SPACE(sizeof(gso_size));
	}
	msg.msg_controllen = control_len;
	if (sendmsg(fd, &msg, 0) >= 0)
	{
		return TRUE;
	}
	switch (errno)
	{
		case EBADF:
		case ENOTSOCK:
			/* charon closed it: look again next time */
			this->send_sockets.fd[family == AF_INET6] = -1;
			return FALSE;
		case EINVAL:
		case EIO:
		case ENOPROTOOPT:
		case EOPNOTSUPP:
			if (count > 1)
			{
				DBG1(DBG_KNL, "kernel-dataplane: UDP segmentation offload "
					 "refused (%s): one send per packet", strerror(errno));
				this->udp_gso = FALSE;
				return FALSE;
			}
			/* fall through */
		default:
			DBG2(DBG_KNL, "kernel-dataplane: sending %u ESP packets to %#H "
				 "failed: %s", count, dst, strerror(errno));
			return TRUE;
	}
}

/**
 * Encrypts `count` cleartext packets (packet i: lengths[i] bytes at
 * OUTBOUND_HEADROOM in buffers[i], capacities[i] bytes in all) and sends
 * them, packets of one SA and one size together.
 */
static void process_outbound(private_kernel_dataplane_router_t *this,
							 uint8_t **buffers, size_t *capacities,
							 size_t *lengths, unsigned count)
{
	kernel_dataplane_gateway_t *gw = this->gw;
	ipsec_gateway_result result;
	ipsec_status status;
	dataplane_sa_t *sa, *last_sa = NULL;
	host_t *src[BATCH], *dst[BATCH];
	int endpoint[BATCH];
	struct iovec iov[BATCH];
	size_t offset, esp, segment = 0;
	unsigned i, j, endpoints = 0, batched = 0;
	uint64_t now = dataplane_now_ns();
	bool expired = FALSE;

	gw->mutex->lock(gw->mutex);
	for (i = 0; i < count; i++)
	{
		offset = OUTBOUND_HEADROOM;
		endpoint[i] = -1;
		/* one read of the clock for the batch: it came from one TUN read */
		status = ipsec_gateway_outbound(gw->gateway, buffers[i], capacities[i],
										&offset, &lengths[i], now, &result);
		expired |= status == IPSEC_ERR_LIFETIME_EXPIRED;
		if (status != IPSEC_OK || result.verdict != IPSEC_VERDICT_PROTECTED ||
			(sa = gw->sas->get(gw->sas, result.sa)) == NULL ||
			(esp = esp_offset(buffers[i] + offset, lengths[i])) == 0)
		{
			/* DISCARD (no CHILD_SA covers it), BYPASS (the plugin installs
			 * none, and a bypassed packet has nowhere to go from here), or
			 * a drop the library counted on the SA */
			gw->counters.outbound_dropped++;
			DBG2(DBG_KNL, "kernel-dataplane: outbound packet dropped: %s",
				 status == IPSEC_OK ? "not protected"
									: ipsec_status_str(status));
			continue;
		}
		if (sa != last_sa)
		{	/* the hosts are cloned: charon may delete the SA once the
			 * lock is released */
			src[endpoints] = sa->src->clone(sa->src);
			dst[endpoints] = sa->dst->clone(sa->dst);
			endpoints++;
			last_sa = sa;
		}
		endpoint[i] = endpoints - 1;
		iov[i].iov_base = buffers[i] + offset + esp;
		iov[i].iov_len = lengths[i] - esp;
		gw->counters.outbound_sent++;
	}
	gw->mutex->unlock(gw->mutex);

	/* runs of packets to the same endpoints, every one as long as the
	 * first but the last (what one UDP GSO send can carry) */
	for (i = 0; i < count; i = j)
	{
		if (endpoint[i] < 0)
		{
			j = i + 1;
			continue;
		}
		segment = iov[i].iov_len;
		batched = iov[i].iov_len;
		for (j = i + 1; j < count && endpoint[j] == endpoint[i] &&
			 iov[j].iov_len <= segment && iov[j - 1].iov_len == segment &&
			 batched + iov[j].iov_len <= MAX_UDP_GSO_BYTES &&
			 j - i < MAX_UDP_GSO_SEGMENTS; j++)
		{
			batched += iov[j].iov_len;
		}
		if (send_batch(this, src[endpoint[i]], dst[endpoint[i]], &iov[i],
					   j - i, segment))
		{
			continue;
		}
		for (unsigned k = i; k < j; k++)
		{
			if (!send_batch(this, src[endpoint[i]], dst[endpoint[i]], &iov[k],
							1, iov[k].iov_len))
			{
				send_via_charon(src[endpoint[i]], dst[endpoint[i]],
								iov[k].iov_base, iov[k].iov_len);
			}
		}
	}
	for (i = 0; i < endpoints; i++)
	{
		src[i]->destroy(src[i]);
		dst[i]->destroy(dst[i]);
	}
	kernel_dataplane_poll_events(gw, expired);
}

/** Counts a frame from the TUN device that is not a packet the data path
 * takes. */
static void count_malformed(private_kernel_dataplane_router_t *this)
{
	this->gw->mutex->lock(this->gw->mutex);
	this->gw->counters.tun_malformed++;
	this->gw->mutex->unlock(this->gw->mutex);
}

/**
 * Cuts a TCP send burst (in the outbound buffer) into segments, in batches
 * of at most BATCH, and sends them.
 */
static void process_burst(private_kernel_dataplane_router_t *this,
						  struct virtio_net_hdr *vnet, size_t len)
{
	uint8_t *packet = this->outbound_buffer + OUTBOUND_HEADROOM;
	uint8_t *buffers[BATCH];
	size_t capacities[BATCH], lengths[BATCH];
	dataplane_tso_t tso;
	unsigned segments, i, n;

	segments = dataplane_tso_prepare(&tso, vnet, packet, len);
	if (segments == 0 || tso.ip_len + tso.tcp_len + tso.mss > SEGMENT_MAX)
	{
		count_malformed(this);
		return;
	}
	for (i = 0; i < segments; i += n)
	{
		n = min(segments - i, BATCH);
		for (unsigned k = 0; k < n; k++)
		{
			buffers[k] = this->segments + (size_t)k * SEGMENT_SLOT;
			capacities[k] = SEGMENT_SLOT;
			lengths[k] = dataplane_tso_segment(&tso, packet, i + k,
											   buffers[k] + OUTBOUND_HEADROOM);
		}
		process_outbound(this, buffers, capacities, lengths, n);
	}
}

/**
 * The TUN reader job: one read (a packet, or with offloads a TCP burst of
 * up to 64 KiB) per round, then requeued. It reads from the device's
 * descriptor straight into the outbound buffer (the TUN device's
 * read_packet() would allocate and copy every packet twice); the read
 * blocks in a cancellation point, so charon's processor can cancel it.
 */
static job_requeue_t read_tun(private_kernel_dataplane_router_t *this)
{
	dataplane_tun_t *tun = this->gw->tun;
	struct virtio_net_hdr vnet;
	struct iovec iov[2] = {
		{ .iov_base = &vnet, .iov_len = sizeof(vnet) },
		{ .iov_base = this->outbound_buffer + OUTBOUND_HEADROOM,
		  .iov_len = MAX_IP_PACKET },
	};
	uint8_t *buffers[1] = { this->outbound_buffer };
	size_t capacities[1] = { this->outbound_capacity }, lengths[1];
	ssize_t len;
	bool old;

	old = thread_cancelability(TRUE);
	len = readv(tun->fd, tun->offload ? iov : iov + 1, tun->offload ? 2 : 1);
	thread_cancelability(old);
	if (len < 0)
	{
		if (errno == EINTR || errno == EAGAIN)
		{
			return JOB_REQUEUE_DIRECT;
		}
		DBG1(DBG_KNL, "kernel-dataplane: reading from TUN device %s failed: "
			 "%s", tun->name, strerror(errno));
		/* pause (a cancellation point) so that a device that keeps failing
		 * does not spin a thread */
		usleep(100000);
		return JOB_REQUEUE_FAIR;
	}
	if (tun->offload)
	{
		len -= sizeof(vnet);
		if (len > 0 && vnet.gso_type != VIRTIO_NET_HDR_GSO_NONE)
		{
			process_burst(this, &vnet, len);
			return JOB_REQUEUE_DIRECT;
		}
		if (len > 0 && (vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) &&
			!dataplane_csum_complete(&vnet, this->outbound_buffer +
									 OUTBOUND_HEADROOM, len))
		{
			len = 0;
		}
	}
	if (len <= 0 || len > MAX_IP_PACKET)
	{
		count_malformed(this);
		return JOB_REQUEUE_DIRECT;
	}
	lengths[0] = len;
	process_outbound(this, buffers, capacities, lengths, 1);
	return JOB_REQUEUE_DIRECT;
}

/**
 * Writes the outer IP header (protocol ESP) for an ESP packet that arrived
 * from `src` to `dst` in front of `esp_len` bytes at buf + header_len.
 *
 * @return		the header's length, 0 when the addresses do not fit
 */
static size_t write_outer_header(uint8_t *buf, host_t *src, host_t *dst,
								 size_t esp_len)
{
	chunk_t src_addr = src->get_address(src), dst_addr = dst->get_address(dst);
	uint32_t sum = 0;
	size_t i;

	if (src->get_family(src) != dst->get_family(dst))
	{
		return 0;
	}
	if (src->get_family(src) == AF_INET)
	{
		if (IPV4_HEADER_LEN + esp_len > MAX_IP_PACKET)
		{
			return 0;
		}
		memset(buf, 0, IPV4_HEADER_LEN);
		buf[0] = 0x45;
		htoun16(buf + 2, IPV4_HEADER_LEN + esp_len);
		buf[8] = 64;	/* TTL: the packet already crossed the network */
		buf[9] = IPPROTO_ESP;
		memcpy(buf + 12, src_addr.ptr, 4);
		memcpy(buf + 16, dst_addr.ptr, 4);
		/* the library checks the IPv4 header checksum */
		for (i = 0; i < IPV4_HEADER_LEN; i += 2)
		{
			sum += ((uint32_t)buf[i] << 8) | buf[i + 1];
		}
		while (sum >> 16)
		{
			sum = (sum & 0xffff) + (sum >> 16);
		}
		htoun16(buf + 10, ~sum & 0xffff);
		return IPV4_HEADER_LEN;
	}
	if (esp_len > 65535)
	{
		return 0;
	}
	memset(buf, 0, IPV6_HEADER_LEN);
	buf[0] = 0x60;
	htoun16(buf + 4, esp_len);
	buf[6] = IPPROTO_ESP;
	buf[7] = 64;
	memcpy(buf + 8, src_addr.ptr, 16);
	memcpy(buf + 24, dst_addr.ptr, 16);
	return IPV6_HEADER_LEN;
}

/** Writes one frame to the TUN device; a failure is counted. */
static void write_tun(private_kernel_dataplane_router_t *this,
					  struct iovec *iov, int count)
{
	kernel_dataplane_gateway_t *gw = this->gw;

	if (writev(gw->tun->fd, iov, count) < 0)
	{
		DBG2(DBG_KNL, "kernel-dataplane: writing to TUN device %s failed: %s",
			 gw->tun->name, strerror(errno));
		gw->mutex->lock(gw->mutex);
		gw->counters.tun_write_failed++;
		gw->mutex->unlock(gw->mutex);
	}
}

/** Writes the TCP segments held for the TUN device, if any. */
static void flush_held(private_kernel_dataplane_router_t *this)
{
	const uint8_t *frame;
	struct iovec iov;

	iov.iov_len = dataplane_gro_flush(&this->gro, &frame);
	if (iov.iov_len)
	{
		iov.iov_base = (void*)frame;
		write_tun(this, &iov, 1);
	}
}

/**
 * Writes a decrypted packet to the TUN device: as it is without offloads;
 * with them, TCP segments of one stream are held and merged while more ESP
 * waits on charon's socket (merge_more), other packets go out at once, after
 * what is held.
 */
static void deliver(private_kernel_dataplane_router_t *this, uint8_t *packet,
					size_t len)
{
	struct virtio_net_hdr vnet = {};
	struct iovec iov[2] = {
		{ .iov_base = &vnet, .iov_len = sizeof(vnet) },
		{ .iov_base = packet, .iov_len = len },
	};

	if (!this->gw->tun->offload)
	{
		write_tun(this, iov + 1, 1);
		return;
	}
	switch (dataplane_gro_add(&this->gro, packet, len))
	{
		case DATAPLANE_GRO_HELD:
			return;
		case DATAPLANE_GRO_FLUSH_FIRST:
			flush_held(this);
			if (dataplane_gro_add(&this->gro, packet, len) == DATAPLANE_GRO_HELD)
			{
				return;
			}
			break;
		case DATAPLANE_GRO_BYPASS:
			flush_held(this);
			break;
	}
	write_tun(this, iov, 2);
}

/**
 * TRUE when the next datagram waiting on charon's socket for `family` and
 * `port` is ESP: charon's receiver will hand it over next, so what is held
 * may wait for it. Anything else (nothing, an IKE message, a keepalive, a
 * socket not found) says: write now. This is how a burst ends without a
 * timer: held segments never wait for a packet that is not already there.
 */
static bool more_esp_waiting(private_kernel_dataplane_router_t *this,
							 int family, uint16_t port)
{
	uint8_t head[8];
	uint32_t marker;
	int fd;

	fd = udp_socket(&this->receive_sockets, family, port);
	if (fd < 0 ||
		recv(fd, head, sizeof(head), MSG_PEEK | MSG_DONTWAIT) < (ssize_t)sizeof(head))
	{
		return FALSE;
	}
	memcpy(&marker, head, sizeof(marker));
	/* a zero non-ESP marker is IKE (RFC 3948) */
	return marker != 0;
}

/**
 * charon's receiver calls this for every ESP packet (UDP payload, SPI
 * first) on its NAT-T socket; the packet is ours to destroy.
 */
static void receive_esp(private_kernel_dataplane_router_t *this,
						packet_t *packet)
{
	kernel_dataplane_gateway_t *gw = this->gw;
	chunk_t esp = packet->get_data(packet);
	host_t *src = packet->get_source(packet), *dst = packet->get_destination(packet);
	ipsec_gateway_result result;
	ipsec_status status = IPSEC_ERR_MALFORMED;
	size_t header_len, offset = 0, length = 0;
	uint8_t *buf = this->inbound_buffer;
	bool delivered = FALSE;

	/* refuses what would not fit an IP packet (and so the buffer) */
	header_len = write_outer_header(buf, src, dst, esp.len);
	if (header_len)
	{
		memcpy(buf + header_len, esp.ptr, esp.len);
		length = header_len + esp.len;
		gw->mutex->lock(gw->mutex);
		status = ipsec_gateway_inbound(gw->gateway, buf, IPV6_HEADER_LEN +
									   esp.len, &offset, &length,
									   dataplane_now_ns(), &result);
		if (status == IPSEC_OK && result.verdict == IPSEC_VERDICT_DECRYPTED)
		{
			gw->counters.inbound_delivered++;
			delivered = TRUE;
		}
		else
		{
			gw->counters.inbound_dropped++;
		}
		gw->mutex->unlock(gw->mutex);
	}
	else
	{
		gw->mutex->lock(gw->mutex);
		gw->counters.inbound_dropped++;
		gw->mutex->unlock(gw->mutex);
	}

	if (delivered)
	{
		deliver(this, buf + offset, length);
	}
	else
	{
		DBG2(DBG_KNL, "kernel-dataplane: inbound ESP from %#H dropped: %s",
			 src, status == IPSEC_OK ? "not decrypted"
									 : ipsec_status_str(status));
	}
	if (this->gro.len &&
		!more_esp_waiting(this, dst->get_family(dst), dst->get_port(dst)))
	{
		flush_held(this);
	}
	packet->destroy(packet);
	kernel_dataplane_poll_events(gw, status == IPSEC_ERR_LIFETIME_EXPIRED);
}

METHOD(kernel_dataplane_router_t, destroy, void,
	private_kernel_dataplane_router_t *this)
{
	/* del_esp_cb waits for a callback in progress (the receiver holds its
	 * lock around it) */
	charon->receiver->del_esp_cb(charon->receiver,
								 (receiver_esp_cb_t)receive_esp);
	flush_held(this);
	DBG1(DBG_KNL, "kernel-dataplane: %llu packets out, %llu in, dropped "
		 "%llu out, %llu in, %llu malformed from TUN, %llu TUN writes failed",
		 (unsigned long long)this->gw->counters.outbound_sent,
		 (unsigned long long)this->gw->counters.inbound_delivered,
		 (unsigned long long)this->gw->counters.outbound_dropped,
		 (unsigned long long)this->gw->counters.inbound_dropped,
		 (unsigned long long)this->gw->counters.tun_malformed,
		 (unsigned long long)this->gw->counters.tun_write_failed);
	dataplane_gro_free(&this->gro);
	free(this->outbound_buffer);
	free(this->segments);
	free(this->inbound_buffer);
	free(this);
}

kernel_dataplane_router_t *kernel_dataplane_router_create(
									kernel_dataplane_gateway_t *gateway)
{
	private_kernel_dataplane_router_t *this;

	INIT(this,
		.public = {
			.destroy = _destroy,
		},
		.gw = gateway,
		.outbound_capacity = OUTBOUND_HEADROOM + MAX_IP_PACKET +
							 OUTBOUND_TAILROOM,
		.send_sockets = { .fd = { -1, -1 } },
		.receive_sockets = { .fd = { -1, -1 } },
		.udp_gso = TRUE,
	);
	this->outbound_buffer = malloc(this->outbound_capacity);
	this->segments = malloc((size_t)BATCH * SEGMENT_SLOT);
	this->inbound_buffer = malloc(IPV6_HEADER_LEN + MAX_IP_PACKET);
	if (!this->outbound_buffer || !this->segments || !this->inbound_buffer ||
		!dataplane_gro_init(&this->gro))
	{
		DBG1(DBG_KNL, "kernel-dataplane: out of memory for the data path");
		dataplane_gro_free(&this->gro);
		free(this->outbound_buffer);
		free(this->segments);
		free(this->inbound_buffer);
		free(this);
		return NULL;
	}

	charon->receiver->add_esp_cb(charon->receiver,
								 (receiver_esp_cb_t)receive_esp, this);
	/* the job is cancelled (return_false: cancel the thread) by the
	 * processor when charon shuts down */
	lib->processor->queue_job(lib->processor,
			(job_t*)callback_job_create((callback_job_cb_t)read_tun, this,
										NULL, (callback_job_cancel_t)return_false));
	return &this->public;
}
