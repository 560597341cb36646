/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the
 * Free Software Foundation; either version 2 of the License, or (at your
 * option) any later version. See ../COPYING.
 */

/**
 * kernel-dataplane: charon's IPsec backend (kernel_ipsec_t) on the
 * ipsec-dataplane library, with a TUN device for the cleartext side and
 * charon's own UDP sockets for ESP in UDP.
 */

#ifndef KERNEL_DATAPLANE_PLUGIN_H_
#define KERNEL_DATAPLANE_PLUGIN_H_

#include <library.h>
#include <plugins/plugin.h>

typedef struct kernel_dataplane_plugin_t kernel_dataplane_plugin_t;

/**
 * The plugin.
 */
struct kernel_dataplane_plugin_t {

	/**
	 * Implements the plugin interface.
	 */
	plugin_t plugin;
};

/**
 * The one symbol the plugin exports: charon's plugin loader looks it up by
 * the plugin's name ("kernel-dataplane").
 */
plugin_t *kernel_dataplane_plugin_create(void);

#endif /** KERNEL_DATAPLANE_PLUGIN_H_ */
