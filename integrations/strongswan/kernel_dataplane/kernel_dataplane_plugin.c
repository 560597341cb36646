/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the
 * Free Software Foundation; either version 2 of the License, or (at your
 * option) any later version. See ../COPYING.
 */

#include "kernel_dataplane_plugin.h"
#include "kernel_dataplane_gateway.h"
#include "kernel_dataplane_ipsec.h"
#include "kernel_dataplane_router.h"

#include <daemon.h>
#include <utils/debug.h>

/** The TUN device's default name and MTU (strongswan.conf:
 * charon.plugins.kernel-dataplane.tun_name / .mtu; .offload turns the TUN
 * offloads of kernel_dataplane_tun.h off). The MTU leaves room for
 * the outer IP, UDP and ESP headers on a 1500-byte path, as kernel-libipsec's
 * default does. */
#define DEFAULT_TUN_NAME "ipsec-dp0"
#define DEFAULT_TUN_MTU 1400

typedef struct private_kernel_dataplane_plugin_t private_kernel_dataplane_plugin_t;

struct private_kernel_dataplane_plugin_t {

	/** Public interface. */
	kernel_dataplane_plugin_t public;

	/** The shared state (gateway, TUN device); owned. */
	kernel_dataplane_gateway_t *gateway;

	/** The data path, while the router feature is loaded. */
	kernel_dataplane_router_t *router;
};

METHOD(plugin_t, get_name, char*,
	private_kernel_dataplane_plugin_t *this)
{
	return "kernel-dataplane";
}

/**
 * The router feature: it needs charon's receiver (for the ESP callback), so
 * it is its own feature that depends on "libcharon-receiver".
 */
static bool create_router(private_kernel_dataplane_plugin_t *this,
						  plugin_feature_t *feature, bool reg, void *arg)
{
	if (reg)
	{
		this->router = kernel_dataplane_router_create(this->gateway);
		return this->router != NULL;
	}
	else
	{
		DESTROY_IF(this->router);
		this->router = NULL;
	}
	return TRUE;
}

METHOD(plugin_t, get_features, int,
	private_kernel_dataplane_plugin_t *this, plugin_feature_t *features[])
{
	static plugin_feature_t f[] = {
		PLUGIN_CALLBACK(kernel_ipsec_register, kernel_dataplane_ipsec_create),
			PLUGIN_PROVIDE(CUSTOM, "kernel-ipsec"),
		PLUGIN_CALLBACK((plugin_feature_callback_t)create_router, NULL),
			PLUGIN_PROVIDE(CUSTOM, "kernel-dataplane-router"),
				PLUGIN_DEPENDS(CUSTOM, "libcharon-receiver"),
	};
	*features = f;
	return countof(f);
}

METHOD(plugin_t, destroy, void,
	private_kernel_dataplane_plugin_t *this)
{
	kernel_dataplane_gateway = NULL;
	kernel_dataplane_gateway_destroy(this->gateway);
	free(this);
}

plugin_t *kernel_dataplane_plugin_create(void)
{
	private_kernel_dataplane_plugin_t *this;
	char *tun_name;
	int mtu;
	bool offload;

	if (!lib->caps->check(lib->caps, CAP_NET_ADMIN))
	{	/* creating the TUN device and its routes needs it */
		DBG1(DBG_KNL, "kernel-dataplane plugin requires CAP_NET_ADMIN");
		return NULL;
	}
	if (kernel_dataplane_gateway)
	{
		DBG1(DBG_KNL, "kernel-dataplane: loaded twice");
		return NULL;
	}
	tun_name = lib->settings->get_str(lib->settings,
					"%s.plugins.kernel-dataplane.tun_name", DEFAULT_TUN_NAME,
					lib->ns);
	mtu = lib->settings->get_int(lib->settings,
					"%s.plugins.kernel-dataplane.mtu", DEFAULT_TUN_MTU, lib->ns);
	offload = lib->settings->get_bool(lib->settings,
					"%s.plugins.kernel-dataplane.offload", TRUE, lib->ns);

	INIT(this,
		.public = {
			.plugin = {
				.get_name = _get_name,
				.get_features = _get_features,
				.destroy = _destroy,
			},
		},
		.gateway = kernel_dataplane_gateway_create(tun_name, mtu, offload),
	);
	if (!this->gateway)
	{
		free(this);
		return NULL;
	}
	kernel_dataplane_gateway = this->gateway;

	/* virtual IPs go on the TUN device, so their traffic meets the plugin */
	lib->settings->set_str(lib->settings, "%s.install_virtual_ip_on",
						   this->gateway->tun->name,
						   lib->ns);
	return &this->public.plugin;
}
