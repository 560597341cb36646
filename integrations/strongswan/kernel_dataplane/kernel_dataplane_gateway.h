/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * kernel-dataplane: a strongSwan charon plugin that lets charon drive the
 * ipsec-dataplane library (libipsec of this repository, C API include/ipsec.h).
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the
 * Free Software Foundation; either version 2 of the License, or (at your
 * option) any later version. See ../COPYING.
 */

/**
 * The state the plugin's two halves share: the library's gateway (SAD + SPD),
 * the lock around it, and what the plugin keeps per SA beside the library
 * (outer endpoints with ports for charon's sender; the time of last use is
 * the library's, see query_sa).
 *
 * The control half (kernel_dataplane_ipsec.c, called by charon's worker
 * threads) and the packet half (kernel_dataplane_router.c: the TUN reader job
 * and charon's receiver thread) both use it.
 *
 * Thread safety: the library's gateway is used by one thread at a time, for
 * packet and control calls alike (include/ipsec.h, "Thread safety"). So every
 * call on `gateway`, and every access to the SA table, happens with `mutex`
 * held. Nothing else in this struct changes after creation. The lock is held
 * only for the library call and the table update, never while sending or
 * writing to the TUN device or calling into charon->kernel (which may call
 * back into this plugin).
 */

#ifndef KERNEL_DATAPLANE_GATEWAY_H_
#define KERNEL_DATAPLANE_GATEWAY_H_

#include <library.h>
#include <networking/host.h>
#include <threading/mutex.h>
#include <collections/hashtable.h>

#include <ipsec.h>

#include "kernel_dataplane_tun.h"

/** Longest SA name the plugin gives the library ("out-0123abcd-4294967295"). */
#define DATAPLANE_SA_NAME_LEN 32

typedef struct dataplane_sa_t dataplane_sa_t;
typedef struct kernel_dataplane_gateway_t kernel_dataplane_gateway_t;

/**
 * One SA charon installed, as the plugin tracks it beside the library.
 */
struct dataplane_sa_t {
	/** The name the SA has in the library's gateway (unique per SA). */
	char name[DATAPLANE_SA_NAME_LEN];
	/** SPI in network order, as charon passes it. */
	uint32_t spi;
	/** TRUE for an SA we decrypt with, FALSE for one we encrypt with. */
	bool inbound;
	/** charon's reqid: the SAs of one CHILD_SA and its rekeyings share it. */
	uint32_t reqid;
	/**
	 * Outer source and destination, ports included (UDP encapsulation).
	 * For outbound SAs these are what charon's sender sends from and to;
	 * update_sa changes them (NAT mapping changes, MOBIKE).
	 */
	host_t *src;
	host_t *dst;
	/** Insertion order: the newest SA of a reqid is the one to rekey from. */
	uint64_t serial;
};

/**
 * The shared state (see the file comment).
 */
struct kernel_dataplane_gateway_t {
	/** Held around every gateway call and every access to `sas`. */
	mutex_t *mutex;
	/** The library's gateway: starts with one final deny-all policy. */
	ipsec_gateway *gateway;
	/** dataplane_sa_t by name (the library reports SAs by name). */
	hashtable_t *sas;
	/** Next dataplane_sa_t.serial. */
	uint64_t next_serial;
	/** The cleartext side (owned). */
	dataplane_tun_t *tun;
	/** Packet counters of the data path (under `mutex`). */
	struct {
		/** Read from TUN but not a packet the library could take. */
		uint64_t tun_malformed;
		/** Outbound packets the library dropped (SPD discard, no SA, ...). */
		uint64_t outbound_dropped;
		/** ESP from charon's receiver the plugin or the library dropped. */
		uint64_t inbound_dropped;
		/** Outbound packets encrypted and handed to charon's socket. */
		uint64_t outbound_sent;
		/** Inbound packets decrypted and written to TUN. */
		uint64_t inbound_delivered;
		/** Writes to the TUN device that failed (a frame of one or more
		 * decrypted packets lost). */
		uint64_t tun_write_failed;
	} counters;
};

/** The name of the final deny-all policy every other policy goes before. */
#define DATAPLANE_DENY_ALL "charon-deny-all"

/**
 * The plugin's one shared state, set while the plugin is loaded. The
 * kernel_ipsec_t constructor charon calls takes no argument, so it finds the
 * state here (kernel-libipsec does the same with lib->get()).
 */
extern kernel_dataplane_gateway_t *kernel_dataplane_gateway;

/**
 * Creates the shared state: the gateway (deny-all only) and the TUN device.
 *
 * @param tun_name		name of the TUN device to create
 * @param mtu			its MTU
 * @param offload		TUN offloads (TSO, checksum) where the kernel has them
 * @return				the state, NULL on failure (logged)
 */
kernel_dataplane_gateway_t *kernel_dataplane_gateway_create(char *tun_name,
															 int mtu, bool offload);

/**
 * Frees the shared state: the gateway (its keys are wiped by the library),
 * the SA table, the TUN device.
 */
void kernel_dataplane_gateway_destroy(kernel_dataplane_gateway_t *this);

/**
 * The caller's clock for the library: CLOCK_MONOTONIC in nanoseconds.
 */
uint64_t dataplane_now_ns(void);

/**
 * Logs a failed library call with the library's own explanation
 * (ipsec_last_error(), which is per thread: call this on the thread that
 * made the call, right after it).
 */
void dataplane_log_failure(const char *what, ipsec_status status);

/**
 * Frees a dataplane_sa_t.
 */
void dataplane_sa_destroy(dataplane_sa_t *sa);

#endif /** KERNEL_DATAPLANE_GATEWAY_H_ */
