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
 * thread pool reads each cleartext packet straight into a buffer with
 * headroom and tailroom (no copy), and hands it to ipsec_gateway_outbound.
 * For the plugin's SAs (tunnel mode, ESP in UDP) the library writes the
 * whole wire packet: outer IPv4/IPv6 header + UDP header + ESP. charon's
 * socket wants the UDP payload only (it owns the socket and the UDP
 * header), so the data path strips the outer IP and UDP headers and sends
 * the ESP from and to the SA's endpoints with charon->socket->send, from the
 * reader's thread. That is what charon's sender thread does with a packet
 * queued by sender->send_no_marker, without waking that thread for every
 * packet (a context switch each way). Like send_no_marker it adds no
 * non-ESP marker: this is ESP. socket-default sets the DSCP of a packet
 * with setsockopt() when it differs from the last one's; ESP packets carry
 * DSCP 0, as IKE packets do unless a connection sets `dscp`.
 *
 * Inbound: charon's receiver hands ESP that arrived on its NAT-T socket to
 * the ESP callback as a UDP payload (SPI first) with the addresses and
 * ports. ipsec_gateway_inbound wants a whole IP packet; the data path puts
 * an outer IPv4/IPv6 header naming ESP (protocol 50) in front: the library
 * recognises ESP in UDP only on port 4500, plain ESP on any, and the SAs are
 * found by SPI, so plain ESP works whatever NAT-T port charon uses. The
 * decrypted inner packet goes to the TUN device; the host delivers or
 * forwards it.
 *
 * Every drop is counted (kernel_dataplane_gateway_t.counters, and the
 * library's own per-SA and gateway counters) and logged at level 2; a
 * malformed packet never stops the data path.
 */

#include "kernel_dataplane_router.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <unistd.h>

#include <daemon.h>
#include <networking/packet.h>
#include <processing/jobs/callback_job.h>
#include <threading/thread.h>
#include <utils/debug.h>

/** Headroom before a cleartext packet: outer IPv6 (40) + UDP (8) + ESP
 * header (8) + IV (16), rounded up. */
#define OUTBOUND_HEADROOM 128
/** Tailroom after it: TFC padding up to a 64 KiB packet, ESP padding (up
 * to 255), pad length, next header and ICV (16). */
#define OUTBOUND_TAILROOM (65535 + 512)
/** Largest IP packet the TUN device hands us. */
#define MAX_IP_PACKET 65535

#define IPV4_HEADER_LEN 20
#define IPV6_HEADER_LEN 40
#define UDP_HEADER_LEN 8

typedef struct private_kernel_dataplane_router_t private_kernel_dataplane_router_t;

struct private_kernel_dataplane_router_t {

	/** Public interface. */
	kernel_dataplane_router_t public;

	/** The plugin's shared state. */
	kernel_dataplane_gateway_t *gw;

	/** The outbound buffer: only the TUN reader job uses it (one job, so
	 * one thread at a time). */
	uint8_t *outbound_buffer;
	size_t outbound_capacity;

	/** The inbound buffer (outer IP header + ESP): only charon's receiver
	 * thread uses it (it calls receive_esp() under its own lock). */
	uint8_t *inbound_buffer;
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
 * Encrypts the cleartext packet of `length` bytes at OUTBOUND_HEADROOM in
 * the outbound buffer and sends it.
 */
static void process_outbound(private_kernel_dataplane_router_t *this,
							 size_t length)
{
	kernel_dataplane_gateway_t *gw = this->gw;
	ipsec_gateway_result result;
	ipsec_status status;
	dataplane_sa_t *sa;
	host_t *src = NULL, *dst = NULL;
	size_t offset = OUTBOUND_HEADROOM, esp;
	packet_t *packet;

	if (length == 0 || length > MAX_IP_PACKET)
	{
		gw->mutex->lock(gw->mutex);
		gw->counters.tun_malformed++;
		gw->mutex->unlock(gw->mutex);
		return;
	}

	gw->mutex->lock(gw->mutex);
	status = ipsec_gateway_outbound(gw->gateway, this->outbound_buffer,
									this->outbound_capacity, &offset, &length,
									dataplane_now_ns(), &result);
	if (status == IPSEC_OK && result.verdict == IPSEC_VERDICT_PROTECTED &&
		(sa = gw->sas->get(gw->sas, result.sa)) != NULL)
	{
		src = sa->src->clone(sa->src);
		dst = sa->dst->clone(sa->dst);
		gw->counters.outbound_sent++;
	}
	else
	{
		gw->counters.outbound_dropped++;
	}
	gw->mutex->unlock(gw->mutex);

	if (!src)
	{
		/* DISCARD (no CHILD_SA covers it), BYPASS (the plugin installs
		 * none, and a bypassed packet has nowhere to go from here), or a
		 * drop the library counted on the SA */
		DBG2(DBG_KNL, "kernel-dataplane: outbound packet dropped: %s",
			 status == IPSEC_OK ? "not protected" : ipsec_status_str(status));
		kernel_dataplane_poll_events(gw,
								status == IPSEC_ERR_LIFETIME_EXPIRED);
		return;
	}
	esp = esp_offset(this->outbound_buffer + offset, length);
	if (!esp)
	{
		DBG1(DBG_KNL, "kernel-dataplane: unexpected outbound packet layout");
		src->destroy(src);
		dst->destroy(dst);
		return;
	}
	/* packet_create_from_data takes the hosts and the data */
	packet = packet_create_from_data(src, dst,
					chunk_clone(chunk_create(this->outbound_buffer + offset + esp,
											 length - esp)));
	/* a failed send is logged by the socket (as for the sender's packets) */
	charon->socket->send(charon->socket, packet);
	packet->destroy(packet);
	kernel_dataplane_poll_events(gw, FALSE);
}

/**
 * The TUN reader job: one packet per round, then requeued. It reads from
 * the device's descriptor straight into the outbound buffer (the TUN
 * device's read_packet() would allocate and copy every packet twice); the
 * read blocks in a cancellation point, so charon's processor can cancel it.
 */
static job_requeue_t read_tun(private_kernel_dataplane_router_t *this)
{
	ssize_t len;
	bool old;

	old = thread_cancelability(TRUE);
	len = read(this->gw->tun->get_fd(this->gw->tun),
			   this->outbound_buffer + OUTBOUND_HEADROOM, MAX_IP_PACKET);
	thread_cancelability(old);
	if (len < 0)
	{
		if (errno == EINTR || errno == EAGAIN)
		{
			return JOB_REQUEUE_DIRECT;
		}
		DBG1(DBG_KNL, "kernel-dataplane: reading from TUN device %s failed: "
			 "%s", this->gw->tun->get_name(this->gw->tun), strerror(errno));
		/* pause (a cancellation point) so that a device that keeps failing
		 * does not spin a thread */
		usleep(100000);
		return JOB_REQUEUE_FAIR;
	}
	process_outbound(this, len);
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
	bool deliver = FALSE;

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
			deliver = TRUE;
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

	if (deliver)
	{
		gw->tun->write_packet(gw->tun, chunk_create(buf + offset, length));
	}
	else
	{
		DBG2(DBG_KNL, "kernel-dataplane: inbound ESP from %#H dropped: %s",
			 src, status == IPSEC_OK ? "not decrypted"
									 : ipsec_status_str(status));
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
	DBG1(DBG_KNL, "kernel-dataplane: %llu packets out, %llu in, dropped "
		 "%llu out, %llu in, %llu malformed from TUN",
		 (unsigned long long)this->gw->counters.outbound_sent,
		 (unsigned long long)this->gw->counters.inbound_delivered,
		 (unsigned long long)this->gw->counters.outbound_dropped,
		 (unsigned long long)this->gw->counters.inbound_dropped,
		 (unsigned long long)this->gw->counters.tun_malformed);
	free(this->outbound_buffer);
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
	);
	this->outbound_buffer = malloc(this->outbound_capacity);
	this->inbound_buffer = malloc(IPV6_HEADER_LEN + MAX_IP_PACKET);

	charon->receiver->add_esp_cb(charon->receiver,
								 (receiver_esp_cb_t)receive_esp, this);
	/* the job is cancelled (return_false: cancel the thread) by the
	 * processor when charon shuts down */
	lib->processor->queue_job(lib->processor,
			(job_t*)callback_job_create((callback_job_cb_t)read_tun, this,
										NULL, (callback_job_cancel_t)return_false));
	return &this->public;
}
