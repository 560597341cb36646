/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the
 * Free Software Foundation; either version 2 of the License, or (at your
 * option) any later version. See ../COPYING.
 */

/**
 * charon's kernel_ipsec_t (SAD and SPD management) on the ipsec-dataplane
 * gateway.
 */

#ifndef KERNEL_DATAPLANE_IPSEC_H_
#define KERNEL_DATAPLANE_IPSEC_H_

#include <library.h>
#include <kernel/kernel_ipsec.h>

typedef struct kernel_dataplane_ipsec_t kernel_dataplane_ipsec_t;

/**
 * kernel_ipsec_t on the shared gateway (kernel_dataplane_gateway).
 */
struct kernel_dataplane_ipsec_t {

	/**
	 * Implements the kernel_ipsec_t interface.
	 */
	kernel_ipsec_t interface;
};

/**
 * Creates the kernel_ipsec_t charon's kernel interface uses
 * (kernel_ipsec_constructor_t): it works on the plugin's shared gateway.
 *
 * @return			the interface, NULL when the plugin has no gateway
 */
kernel_dataplane_ipsec_t *kernel_dataplane_ipsec_create(void);

#endif /** KERNEL_DATAPLANE_IPSEC_H_ */
