/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the
 * Free Software Foundation; either version 2 of the License, or (at your
 * option) any later version. See ../COPYING.
 */

#include "kernel_dataplane_gateway.h"

#include <time.h>

#include <utils/debug.h>

kernel_dataplane_gateway_t *kernel_dataplane_gateway = NULL;

/**
 * The policy file the gateway starts from: no SA, one policy that discards
 * everything. charon's add_policy calls put their policies before it, so a
 * packet no CHILD_SA covers is dropped (and counted), as the kernel drops
 * what matches no policy of a TUN-routed subnet.
 */
static const char initial_policies[] =
	"[[policy]]\n"
	"name = \"" DATAPLANE_DENY_ALL "\"\n"
	"direction = \"both\"\n"
	"action = \"discard\"\n";

uint64_t dataplane_now_ns(void)
{
	struct timespec ts;

	/* the library only compares times it was given, so any monotonic
	 * epoch will do; CLOCK_MONOTONIC never jumps with the wall clock */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void dataplane_log_failure(const char *what, ipsec_status status)
{
	char message[512];
	size_t len = 0;

	if (ipsec_last_error(message, sizeof(message), &len) != IPSEC_OK)
	{
		/* longer than our buffer or unavailable: the status says enough */
		message[0] = '\0';
	}
	DBG1(DBG_KNL, "kernel-dataplane: %s failed: %s (%u)%s%s", what,
		 ipsec_status_str(status), status, message[0] ? ": " : "", message);
}

void dataplane_sa_destroy(dataplane_sa_t *sa)
{
	DESTROY_IF(sa->src);
	DESTROY_IF(sa->dst);
	free(sa);
}

kernel_dataplane_gateway_t *kernel_dataplane_gateway_create(char *tun_name,
															 int mtu, bool offload)
{
	kernel_dataplane_gateway_t *this;
	ipsec_status status;

	INIT(this,
		.mutex = mutex_create(MUTEX_TYPE_DEFAULT),
		.sas = hashtable_create(hashtable_hash_str, hashtable_equals_str, 32),
	);

	status = ipsec_gateway_new(initial_policies, strlen(initial_policies),
							   dataplane_now_ns(), &this->gateway);
	if (status != IPSEC_OK)
	{
		dataplane_log_failure("creating the gateway", status);
		kernel_dataplane_gateway_destroy(this);
		return NULL;
	}

	/* no address needed: routes through the device carry the source
	 * address (as kernel-libipsec installs them) */
	this->tun = dataplane_tun_create(tun_name, mtu, offload);
	if (!this->tun)
	{
		kernel_dataplane_gateway_destroy(this);
		return NULL;
	}
	DBG1(DBG_KNL, "kernel-dataplane: library %s, TUN device %s (MTU %d, "
		 "offloads %s)", ipsec_version(), this->tun->name, mtu,
		 this->tun->offload ? "on" : "off");
	return this;
}

void kernel_dataplane_gateway_destroy(kernel_dataplane_gateway_t *this)
{
	enumerator_t *enumerator;
	dataplane_sa_t *sa;

	if (!this)
	{
		return;
	}
	enumerator = this->sas->create_enumerator(this->sas);
	while (enumerator->enumerate(enumerator, NULL, &sa))
	{
		this->sas->remove_at(this->sas, enumerator);
		dataplane_sa_destroy(sa);
	}
	enumerator->destroy(enumerator);
	this->sas->destroy(this->sas);
	/* NULL-safe; wipes the keys of the SAs still installed */
	ipsec_gateway_free(this->gateway);
	dataplane_tun_destroy(this->tun);
	this->mutex->destroy(this->mutex);
	free(this);
}
