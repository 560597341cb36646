/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the
 * Free Software Foundation; either version 2 of the License, or (at your
 * option) any later version. See ../COPYING.
 */

/**
 * The cleartext side: a TUN device, with offloads where the kernel has them.
 *
 * strongSwan's tun_device_t opens the device without IFF_VNET_HDR, and that
 * flag can only be chosen when the device is created; so the plugin creates
 * its own. With offloads (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) the host
 * forwards a TCP send burst of up to 64 KiB into the device as one frame and
 * takes merged segments in one write (kernel_dataplane_offload.h).
 */

#ifndef KERNEL_DATAPLANE_TUN_H_
#define KERNEL_DATAPLANE_TUN_H_

#include <net/if.h>
#include <stdbool.h>

typedef struct dataplane_tun_t dataplane_tun_t;

/**
 * A TUN device (IFF_TUN | IFF_NO_PI), removed when destroyed.
 */
struct dataplane_tun_t {
	/** The device's descriptor (blocking). */
	int fd;
	/** Its name. */
	char name[IFNAMSIZ];
	/** TRUE when every frame read or written starts with a
	 * struct virtio_net_hdr and the offloads are on. */
	bool offload;
};

/**
 * Creates the device, sets its MTU and brings it up.
 *
 * @param name		device name (a pattern such as "ipsec%d" works too)
 * @param mtu		its MTU
 * @param offload	ask for IFF_VNET_HDR and TSO/checksum offloads; the
 *					device is made without them (and says so in the log)
 *					when the kernel refuses
 * @return			the device, NULL (logged) on failure
 */
dataplane_tun_t *dataplane_tun_create(const char *name, int mtu, bool offload);

/**
 * Closes the device (NULL-safe).
 */
void dataplane_tun_destroy(dataplane_tun_t *tun);

#endif /** KERNEL_DATAPLANE_TUN_H_ */
