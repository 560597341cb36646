/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the
 * Free Software Foundation; either version 2 of the License, or (at your
 * option) any later version. See ../COPYING.
 */

/**
 * The data path: cleartext from the TUN device through
 * ipsec_gateway_outbound to charon's sender, ESP from charon's receiver
 * through ipsec_gateway_inbound to the TUN device.
 */

#ifndef KERNEL_DATAPLANE_ROUTER_H_
#define KERNEL_DATAPLANE_ROUTER_H_

#include "kernel_dataplane_gateway.h"

typedef struct kernel_dataplane_router_t kernel_dataplane_router_t;

/**
 * Moves packets between the TUN device, the gateway and charon's sockets.
 */
struct kernel_dataplane_router_t {

	/**
	 * Stops the data path: unregisters the ESP callback. The TUN reader job
	 * is cancelled by charon's processor when the daemon shuts down (as
	 * kernel-libipsec's is).
	 */
	void (*destroy)(kernel_dataplane_router_t *this);
};

/**
 * Starts the data path on the shared gateway: registers the ESP callback
 * on charon->receiver and queues the TUN reader job.
 *
 * @param gateway		the plugin's shared state
 * @return				the router
 */
kernel_dataplane_router_t *kernel_dataplane_router_create(
									kernel_dataplane_gateway_t *gateway);

/**
 * Delivers the lifetime events the library raised to charon
 * (charon->kernel->expire). Called by the data path after each packet (the
 * library's byte and packet lifetimes only move with traffic) without the
 * gateway lock held; it polls the library at most once a second unless
 * `now` is set (a packet was refused because its SA expired).
 */
void kernel_dataplane_poll_events(kernel_dataplane_gateway_t *gateway,
								  bool now);

#endif /** KERNEL_DATAPLANE_ROUTER_H_ */
