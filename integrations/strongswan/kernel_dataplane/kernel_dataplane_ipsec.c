/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the
 * Free Software Foundation; either version 2 of the License, or (at your
 * option) any later version. See ../COPYING.
 */

/*
 * How charon's calls map to the library (include/ipsec.h):
 *
 *  get_spi      ipsec_gateway_allocate_spi (random, reserved like a larval SA)
 *  add_sa       ipsec_gateway_add_sa, or ipsec_gateway_rekey_sa when an SA of
 *               the same reqid and direction is installed: charon keeps the
 *               reqid across CHILD_SA rekeyings, and the library's rekey is
 *               make-before-break (a new inbound SA accepts beside the old
 *               one and serves its policies; a new outbound SA takes over
 *               the old one's policies from the next packet on)
 *  update_sa    ipsec_gateway_update_sa (NAT-T mapping changes, MOBIKE)
 *  query_sa     the SA's counters and time of last use from
 *               ipsec_gateway_find_sa
 *  del_sa       ipsec_gateway_delete_sa; an SPI with no SA (a CHILD_SA that
 *               failed) is given back with ipsec_gateway_release_spi
 *  add_policy   IN and OUT of POLICY_IPSEC: one library policy per selector
 *               pair and direction, installed before the final deny-all in
 *               order of specificity, naming the SA of the policy's SPI;
 *               OUT also routes the remote subnet into the TUN device.
 *               FWD: nothing to do, see add_policy.
 *  del_policy   reference counted as charon installs the same policy once
 *               per CHILD_SA of a rekeying; the last one removes it
 *
 * Locking: `policy_mutex` serialises the policy table and route handling;
 * the gateway's mutex (kernel_dataplane_gateway_t) is taken inside it, and
 * only around library calls and the SA table, so the data path never waits
 * for charon->kernel.
 */

#include "kernel_dataplane_ipsec.h"
#include "kernel_dataplane_gateway.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>

#include <daemon.h>
#include <collections/linked_list.h>
#include <threading/mutex.h>
#include <utils/debug.h>

typedef struct private_kernel_dataplane_ipsec_t private_kernel_dataplane_ipsec_t;
typedef struct dataplane_policy_t dataplane_policy_t;
typedef struct exclude_route_t exclude_route_t;

/**
 * A host route to a peer through the physical network, installed while a
 * route of ours into the TUN device covers the peer's address (a remote
 * selector of 0.0.0.0/0, or of the peer's own subnet): IKE and ESP to the
 * peer must not enter the tunnel they carry. Shared by the policies that
 * need it (reference counted, under policy_mutex).
 */
struct exclude_route_t {
	/** The peer's address (the route's destination, a /32 or /128). */
	host_t *peer;
	/** The next hop towards it and the device, as the host routed it
	 * before our route existed. */
	host_t *gateway;
	char *if_name;
	/** The source address the host would use towards the peer. */
	host_t *src;
	/** Policies using it. */
	int refs;
	/** FALSE when an identical route was already there (not ours to
	 * remove). */
	bool installed;
};

/**
 * One library policy, installed for one or more identical charon policies.
 */
struct dataplane_policy_t {
	/** POLICY_IN or POLICY_OUT. */
	policy_dir_t dir;
	/** charon's selectors (clones): for IN the peer's side is src_ts. */
	traffic_selector_t *src_ts;
	traffic_selector_t *dst_ts;
	/** The policy's name in the library. */
	char name[32];
	/** reqid of the SA the library policy names (its rekey chain). */
	uint32_t reqid;
	/** charon's add_policy calls not yet matched by a del_policy. */
	int refs;
	/** Higher goes first: more specific selectors win (see specificity()). */
	int specificity;
	/** OUT only: the host route keeping the peer out of the tunnel while
	 * this policy's route covers the peer, or NULL. */
	exclude_route_t *exclude;
	/** OUT only: the route into the TUN device we installed, or NULL. */
	host_t *route_net;
	uint8_t route_prefixlen;
	host_t *route_src;
};

struct private_kernel_dataplane_ipsec_t {

	/** Public interface. */
	kernel_dataplane_ipsec_t public;

	/** The plugin's shared state (gateway, lock, SA table, TUN device). */
	kernel_dataplane_gateway_t *gw;

	/** Guards `policies` and the routes; taken before gw->mutex. */
	mutex_t *policy_mutex;

	/** dataplane_policy_t, in the library's order (most specific first). */
	linked_list_t *policies;

	/** exclude_route_t (under policy_mutex). */
	linked_list_t *excludes;

	/** Numbers for unique names (SAs under gw->mutex, policies under
	 * policy_mutex). */
	u_int next_sa_number;
	u_int next_policy_number;
};

static void policy_destroy(dataplane_policy_t *policy)
{
	policy->src_ts->destroy(policy->src_ts);
	policy->dst_ts->destroy(policy->dst_ts);
	DESTROY_IF(policy->route_net);
	DESTROY_IF(policy->route_src);
	free(policy);
}

/**
 * Writes the text form of a host address (no port) into buf.
 */
static bool host_text(host_t *host, char *buf, size_t len)
{
	chunk_t address = host->get_address(host);

	return inet_ntop(host->get_family(host), address.ptr, buf, len) != NULL;
}

METHOD(kernel_ipsec_t, get_features, kernel_feature_t,
	private_kernel_dataplane_ipsec_t *this)
{
	/* The protected side goes through charon's own UDP sockets (there is no
	 * raw ESP socket), so every SA must be ESP in UDP: charon then
	 * encapsulates even without a NAT, as it does for kernel-libipsec.
	 * TFC padding: the library pads inner packets (tfc_pad_to). */
	return KERNEL_REQUIRE_UDP_ENCAPSULATION | KERNEL_ESP_V3_TFC;
}

METHOD(kernel_ipsec_t, get_spi, status_t,
	private_kernel_dataplane_ipsec_t *this, host_t *src, host_t *dst,
	uint8_t protocol, uint32_t *spi)
{
	ipsec_status status;
	uint32_t allocated = 0;

	if (protocol != IPPROTO_ESP)
	{
		DBG1(DBG_KNL, "kernel-dataplane: no SPI for IP protocol %u: the "
			 "library does ESP only (no AH)", protocol);
		return FAILED;
	}
	this->gw->mutex->lock(this->gw->mutex);
	status = ipsec_gateway_allocate_spi(this->gw->gateway, dataplane_now_ns(),
										&allocated);
	if (status != IPSEC_OK)
	{
		dataplane_log_failure("allocating an SPI", status);
	}
	this->gw->mutex->unlock(this->gw->mutex);
	if (status != IPSEC_OK)
	{
		return FAILED;
	}
	/* charon keeps SPIs in network order */
	*spi = htonl(allocated);
	DBG2(DBG_KNL, "kernel-dataplane: allocated SPI %.8x", allocated);
	return SUCCESS;
}

METHOD(kernel_ipsec_t, get_cpi, status_t,
	private_kernel_dataplane_ipsec_t *this, host_t *src, host_t *dst,
	uint16_t *cpi)
{
	DBG1(DBG_KNL, "kernel-dataplane: no CPI: the library does no IPComp");
	return NOT_SUPPORTED;
}

/**
 * Maps charon's ESP algorithms to the library's. Key lengths: charon's
 * enc_key of an AEAD (GCM, GMAC, ChaCha20-Poly1305) holds the key followed
 * by the 4-byte salt, which is what the library takes.
 *
 * @return		NULL on success, else why the algorithms are refused
 */
static const char *map_algorithms(kernel_ipsec_add_sa_t *data,
								  ipsec_sa_config *config)
{
	size_t enc_len = data->enc_key.len;
	bool aead = FALSE;

	switch (data->enc_alg)
	{
		case ENCR_AES_GCM_ICV16:
			if (enc_len != 20 && enc_len != 36)
			{
				return "AES-GCM-16 with a key that is not 128 or 256 bits";
			}
			config->cipher = enc_len == 20 ? IPSEC_CIPHER_AES_128_GCM
										   : IPSEC_CIPHER_AES_256_GCM;
			aead = TRUE;
			break;
		case ENCR_NULL_AUTH_AES_GMAC:
			if (enc_len != 20 && enc_len != 36)
			{
				return "AES-GMAC with a key that is not 128 or 256 bits";
			}
			config->cipher = enc_len == 20 ? IPSEC_CIPHER_AES_128_GMAC
										   : IPSEC_CIPHER_AES_256_GMAC;
			aead = TRUE;
			break;
		case ENCR_CHACHA20_POLY1305:
			if (enc_len != 36)
			{
				return "ChaCha20-Poly1305 with a key that is not 256 bits";
			}
			config->cipher = IPSEC_CIPHER_CHACHA20_POLY1305;
			aead = TRUE;
			break;
		case ENCR_AES_CBC:
			if (enc_len != 16 && enc_len != 32)
			{
				return "AES-CBC with a key that is not 128 or 256 bits";
			}
			config->cipher = enc_len == 16 ? IPSEC_CIPHER_AES_128_CBC
										   : IPSEC_CIPHER_AES_256_CBC;
			break;
		case ENCR_NULL:
			config->cipher = IPSEC_CIPHER_NULL;
			break;
		default:
			return "an encryption algorithm the library does not have "
				   "(it has AES-GCM-16, AES-GMAC, ChaCha20-Poly1305, AES-CBC, "
				   "NULL)";
	}
	config->key = enc_len ? data->enc_key.ptr : NULL;
	config->key_len = enc_len;

	switch (data->int_alg)
	{
		case AUTH_UNDEFINED:
			config->integrity = IPSEC_INTEGRITY_NONE;
			break;
		case AUTH_HMAC_SHA1_96:
			config->integrity = IPSEC_INTEGRITY_HMAC_SHA1_96;
			break;
		case AUTH_HMAC_SHA2_256_128:
			config->integrity = IPSEC_INTEGRITY_HMAC_SHA256_128;
			break;
		case AUTH_HMAC_SHA2_384_192:
			config->integrity = IPSEC_INTEGRITY_HMAC_SHA384_192;
			break;
		case AUTH_HMAC_SHA2_512_256:
			config->integrity = IPSEC_INTEGRITY_HMAC_SHA512_256;
			break;
		default:
			return "an integrity algorithm the library does not have (it has "
				   "HMAC-SHA1-96, HMAC-SHA2-256-128, -384-192, -512-256)";
	}
	if (aead && config->integrity != IPSEC_INTEGRITY_NONE)
	{
		return "a combined-mode cipher with a separate integrity algorithm";
	}
	if (!aead && config->integrity == IPSEC_INTEGRITY_NONE)
	{
		return "a cipher without integrity (ESP without authentication)";
	}
	config->integrity_key = data->int_key.len ? data->int_key.ptr : NULL;
	config->integrity_key_len = data->int_key.len;
	return NULL;
}

/**
 * Finds our record of the SA charon names by SPI and destination (and
 * protocol: always ESP here). Call with gw->mutex held.
 */
static dataplane_sa_t *find_sa(private_kernel_dataplane_ipsec_t *this,
							   uint32_t spi, host_t *dst)
{
	enumerator_t *enumerator;
	dataplane_sa_t *sa, *found = NULL;

	enumerator = this->gw->sas->create_enumerator(this->gw->sas);
	while (enumerator->enumerate(enumerator, NULL, &sa))
	{
		if (sa->spi == spi && (!dst || sa->dst->ip_equals(sa->dst, dst)))
		{
			found = sa;
			break;
		}
	}
	enumerator->destroy(enumerator);
	return found;
}

/**
 * The newest SA of a reqid and direction: the one a new SA of the same
 * reqid replaces (a rekeying). Call with gw->mutex held.
 */
static dataplane_sa_t *find_predecessor(private_kernel_dataplane_ipsec_t *this,
										uint32_t reqid, bool inbound)
{
	enumerator_t *enumerator;
	dataplane_sa_t *sa, *found = NULL;

	if (!reqid)
	{
		return NULL;
	}
	enumerator = this->gw->sas->create_enumerator(this->gw->sas);
	while (enumerator->enumerate(enumerator, NULL, &sa))
	{
		if (sa->reqid == reqid && sa->inbound == inbound &&
			(!found || sa->serial > found->serial))
		{
			found = sa;
		}
	}
	enumerator->destroy(enumerator);
	return found;
}

METHOD(kernel_ipsec_t, add_sa, status_t,
	private_kernel_dataplane_ipsec_t *this, kernel_ipsec_sa_id_t *id,
	kernel_ipsec_add_sa_t *data)
{
	ipsec_sa_config config;
	dataplane_sa_t *sa, *predecessor;
	char tunnel_src[INET6_ADDRSTRLEN], tunnel_dst[INET6_ADDRSTRLEN];
	const char *refused = NULL;
	ipsec_status status;
	uint32_t spi = ntohl(id->spi);

	/* refuse what the library (or this plugin's data path) cannot do, with
	 * the reason, before anything is installed */
	if (id->proto != IPPROTO_ESP)
	{
		refused = "AH: the library does ESP only";
	}
	else if (data->ipcomp != IPCOMP_NONE)
	{
		refused = "IPComp: the library has none";
	}
	else if (data->mode != MODE_TUNNEL)
	{
		refused = "not tunnel mode: the TUN data path carries whole inner "
				  "packets only";
	}
	else if (!data->encap)
	{
		refused = "no UDP encapsulation: ESP goes through charon's UDP "
				  "sockets";
	}
	else if (id->mark.value || id->mark.mask || id->if_id || data->label)
	{
		refused = "marks, interface IDs or security labels: the library "
				  "does not select SAs by them";
	}
	if (refused)
	{
		DBG1(DBG_KNL, "kernel-dataplane: refusing SA %.8x: %s", spi, refused);
		return FAILED;
	}

	ipsec_sa_config_init(&config);
	refused = map_algorithms(data, &config);
	if (refused)
	{
		DBG1(DBG_KNL, "kernel-dataplane: refusing SA %.8x (%N/%N): %s", spi,
			 encryption_algorithm_names, data->enc_alg,
			 integrity_algorithm_names, data->int_alg, refused);
		return FAILED;
	}
	if (!host_text(id->src, tunnel_src, sizeof(tunnel_src)) ||
		!host_text(id->dst, tunnel_dst, sizeof(tunnel_dst)))
	{
		DBG1(DBG_KNL, "kernel-dataplane: refusing SA %.8x: bad address", spi);
		return FAILED;
	}

	config.spi = spi;
	config.direction = data->inbound ? IPSEC_DIRECTION_INBOUND
									 : IPSEC_DIRECTION_OUTBOUND;
	config.mode = IPSEC_MODE_TUNNEL;
	config.esn = data->esn;
	if (data->inbound)
	{
		/* the library takes 0 (off) or 32 ..= 2^24 packets */
		config.replay_window = data->replay_window == 0 ? 0 :
							   max(32U, min(data->replay_window, 1U << 24));
	}
	else
	{
		/* the RFC 4303 minimum, as Linux and libipsec send: a few bytes
		 * less on the wire than whole 16-byte blocks */
		config.padding = IPSEC_PADDING_MINIMAL;
		if (data->tfc)
		{
			config.tfc_pad_to = min(data->tfc, 65535U);
		}
	}
	config.tunnel_src = tunnel_src;
	config.tunnel_dst = tunnel_dst;
	/* the library writes (and the data path strips) the outer IP and UDP
	 * headers; the ports are those of charon's NAT-T socket and the peer */
	config.udp_encap = true;
	config.udp_src_port = id->src->get_port(id->src);
	config.udp_dst_port = id->dst->get_port(id->dst);
	if (!config.udp_src_port)
	{
		config.udp_src_port = CHARON_NATT_PORT;
	}
	if (!config.udp_dst_port)
	{
		config.udp_dst_port = CHARON_NATT_PORT;
	}
	/* charon sends NAT-T keepalives itself, for the IKE_SA */
	config.nat_keepalive_interval = 0;
	/* copy_df FALSE is XFRM's NOPMTUDISC: the outer header has DF clear */
	config.df = data->copy_df ? IPSEC_DF_COPY : IPSEC_DF_CLEAR;
	/* byte and packet lifetimes are counted by the library (events go to
	 * charon->kernel->expire); time lifetimes are charon's own rekey and
	 * delete jobs, so the library gets none. charon already applied its
	 * jitter to the soft limits. */
	config.soft_lifetime_jitter = 0;
	if (data->lifetime)
	{
		config.soft_lifetime.bytes = data->lifetime->bytes.rekey;
		config.hard_lifetime.bytes = data->lifetime->bytes.life;
		config.soft_lifetime.packets = data->lifetime->packets.rekey;
		config.hard_lifetime.packets = data->lifetime->packets.life;
	}

	INIT(sa,
		.spi = id->spi,
		.inbound = data->inbound,
		.reqid = data->reqid,
		.src = id->src->clone(id->src),
		.dst = id->dst->clone(id->dst),
	);

	this->gw->mutex->lock(this->gw->mutex);
	snprintf(sa->name, sizeof(sa->name), "%s-%.8x-%u",
			 data->inbound ? "in" : "out", spi, ++this->next_sa_number);
	sa->serial = this->gw->next_serial++;
	predecessor = find_predecessor(this, data->reqid, data->inbound);
	if (predecessor)
	{
		status = ipsec_gateway_rekey_sa(this->gw->gateway, predecessor->name,
										sa->name, &config, dataplane_now_ns());
	}
	else
	{
		status = ipsec_gateway_add_sa(this->gw->gateway, sa->name, &config,
									  dataplane_now_ns());
	}
	if (status == IPSEC_OK)
	{
		this->gw->sas->put(this->gw->sas, sa->name, sa);
		DBG2(DBG_KNL, "kernel-dataplane: installed SA %s (reqid %u)%s%s",
			 sa->name, data->reqid, predecessor ? ", replacing " : "",
			 predecessor ? predecessor->name : "");
	}
	else
	{
		dataplane_log_failure(predecessor ? "rekeying an SA" : "adding an SA",
							  status);
	}
	this->gw->mutex->unlock(this->gw->mutex);

	if (status != IPSEC_OK)
	{
		dataplane_sa_destroy(sa);
		return FAILED;
	}
	return SUCCESS;
}

/**
 * update_sa: NAT mapping changes and MOBIKE move an SA to new addresses or
 * ports. charon does not hand the keys again: ipsec_gateway_update_sa moves
 * the library's SA (the outer header it writes, the ICMP it matches), keeping
 * keys, sequence numbers and counters, and the plugin's own record (the
 * addresses charon's sender sends from and to) follows. When the library
 * refuses, nothing changes.
 */
METHOD(kernel_ipsec_t, update_sa, status_t,
	private_kernel_dataplane_ipsec_t *this, kernel_ipsec_sa_id_t *id,
	kernel_ipsec_update_sa_t *data)
{
	char tunnel_src[INET6_ADDRSTRLEN], tunnel_dst[INET6_ADDRSTRLEN];
	uint16_t src_port, dst_port;
	ipsec_status status = IPSEC_ERR_UNKNOWN_SA;
	dataplane_sa_t *sa;

	if (!data->new_encap)
	{
		DBG1(DBG_KNL, "kernel-dataplane: refusing to update SA %.8x to plain "
			 "ESP: ESP goes through charon's UDP sockets", ntohl(id->spi));
		return FAILED;
	}
	if (!host_text(data->new_src, tunnel_src, sizeof(tunnel_src)) ||
		!host_text(data->new_dst, tunnel_dst, sizeof(tunnel_dst)))
	{
		DBG1(DBG_KNL, "kernel-dataplane: refusing to update SA %.8x: bad "
			 "address", ntohl(id->spi));
		return FAILED;
	}
	/* as in add_sa: the ports of charon's NAT-T socket and the peer */
	src_port = data->new_src->get_port(data->new_src);
	dst_port = data->new_dst->get_port(data->new_dst);
	if (!src_port)
	{
		src_port = CHARON_NATT_PORT;
	}
	if (!dst_port)
	{
		dst_port = CHARON_NATT_PORT;
	}
	this->gw->mutex->lock(this->gw->mutex);
	sa = find_sa(this, id->spi, id->dst);
	if (sa)
	{
		status = ipsec_gateway_update_sa(this->gw->gateway, sa->name,
										 tunnel_src, tunnel_dst, true,
										 src_port, dst_port,
										 dataplane_now_ns());
		if (status == IPSEC_OK)
		{
			sa->src->destroy(sa->src);
			sa->dst->destroy(sa->dst);
			sa->src = data->new_src->clone(data->new_src);
			sa->dst = data->new_dst->clone(data->new_dst);
			if (data->new_reqid)
			{
				sa->reqid = data->new_reqid;
			}
		}
		else
		{
			dataplane_log_failure("updating an SA's endpoints", status);
		}
	}
	this->gw->mutex->unlock(this->gw->mutex);
	if (!sa)
	{
		DBG1(DBG_KNL, "kernel-dataplane: no SA %.8x to %H to update",
			 ntohl(id->spi), id->dst);
		return NOT_FOUND;
	}
	if (status != IPSEC_OK)
	{
		return FAILED;
	}
	DBG1(DBG_KNL, "kernel-dataplane: SA %.8x now %#H == %#H",
		 ntohl(id->spi), data->new_src, data->new_dst);
	return SUCCESS;
}

METHOD(kernel_ipsec_t, query_sa, status_t,
	private_kernel_dataplane_ipsec_t *this, kernel_ipsec_sa_id_t *id,
	kernel_ipsec_query_sa_t *data, uint64_t *bytes, uint64_t *packets,
	time_t *time)
{
	ipsec_gateway_sa info;
	dataplane_sa_t *sa;
	bool found = FALSE;

	this->gw->mutex->lock(this->gw->mutex);
	sa = find_sa(this, id->spi, id->dst);
	if (sa && ipsec_gateway_find_sa(this->gw->gateway, sa->name, &info) ==
			IPSEC_OK)
	{
		found = TRUE;
		if (bytes)
		{
			*bytes = info.stats.bytes;
		}
		if (packets)
		{
			*packets = info.stats.packets;
		}
		if (time)
		{
			/* monotonic seconds, as charon expects use times: last_used_ns
			 * is on dataplane_now_ns()'s clock (CLOCK_MONOTONIC, as
			 * time_monotonic()), meaningful only once the SA carried a
			 * packet; 0: never used */
			*time = info.stats.packets ?
				(time_t)(info.stats.last_used_ns / 1000000000ULL) : 0;
		}
	}
	this->gw->mutex->unlock(this->gw->mutex);
	return found ? SUCCESS : NOT_FOUND;
}

METHOD(kernel_ipsec_t, del_sa, status_t,
	private_kernel_dataplane_ipsec_t *this, kernel_ipsec_sa_id_t *id,
	kernel_ipsec_del_sa_t *data)
{
	ipsec_sa_stats final_stats;
	ipsec_status status = IPSEC_ERR_UNKNOWN_SA;
	dataplane_sa_t *sa;

	this->gw->mutex->lock(this->gw->mutex);
	sa = find_sa(this, id->spi, id->dst);
	if (sa)
	{
		status = ipsec_gateway_delete_sa(this->gw->gateway, sa->name,
										 &final_stats);
		if (status == IPSEC_OK)
		{
			this->gw->sas->remove(this->gw->sas, sa->name);
			DBG2(DBG_KNL, "kernel-dataplane: deleted SA %s after %llu packets",
				 sa->name, (unsigned long long)final_stats.packets);
			dataplane_sa_destroy(sa);
		}
		else
		{
			dataplane_log_failure("deleting an SA", status);
		}
	}
	else
	{
		/* normal for an SPI charon allocated (get_spi) whose SA was never
		 * installed (a failed CHILD_SA): give it back to the library at
		 * once rather than when its reservation runs out */
		bool released = false;

		ipsec_gateway_release_spi(this->gw->gateway, ntohl(id->spi),
								  &released);
		DBG2(DBG_KNL, "kernel-dataplane: no SA %.8x to %H to delete%s",
			 ntohl(id->spi), id->dst, released ? " (SPI released)" : "");
	}
	this->gw->mutex->unlock(this->gw->mutex);
	if (!sa)
	{
		return NOT_FOUND;
	}
	return status == IPSEC_OK ? SUCCESS : FAILED;
}

/**
 * Deletes every SA the library lets go (those no remaining policy needs).
 * Call with gw->mutex held.
 */
static bool delete_all_sas(private_kernel_dataplane_ipsec_t *this)
{
	enumerator_t *enumerator;
	dataplane_sa_t *sa;
	ipsec_status status;
	bool all = TRUE;

	enumerator = this->gw->sas->create_enumerator(this->gw->sas);
	while (enumerator->enumerate(enumerator, NULL, &sa))
	{
		status = ipsec_gateway_delete_sa(this->gw->gateway, sa->name, NULL);
		if (status == IPSEC_OK || status == IPSEC_ERR_UNKNOWN_SA)
		{
			this->gw->sas->remove_at(this->gw->sas, enumerator);
			dataplane_sa_destroy(sa);
		}
		else
		{
			dataplane_log_failure("flushing an SA", status);
			all = FALSE;
		}
	}
	enumerator->destroy(enumerator);
	return all;
}

METHOD(kernel_ipsec_t, flush_sas, status_t,
	private_kernel_dataplane_ipsec_t *this)
{
	bool all;

	this->gw->mutex->lock(this->gw->mutex);
	all = delete_all_sas(this);
	this->gw->mutex->unlock(this->gw->mutex);
	return all ? SUCCESS : FAILED;
}

/**
 * Appends `key = "addresses"` for a traffic selector: a prefix when the
 * selector is one, else the range "from-to".
 */
static bool ts_addresses_toml(traffic_selector_t *ts, const char *key,
							  char *buf, size_t len)
{
	char from[INET6_ADDRSTRLEN], to[INET6_ADDRSTRLEN];
	int family = ts->get_type(ts) == TS_IPV4_ADDR_RANGE ? AF_INET : AF_INET6;
	host_t *net = NULL;
	uint8_t mask = 0;
	size_t used = strlen(buf);
	int written;

	if (ts->to_subnet(ts, &net, &mask))
	{
		written = host_text(net, from, sizeof(from)) ?
				  snprintf(buf + used, len - used, "%s = \"%s/%u\"\n", key,
						   from, mask) : -1;
	}
	else if (inet_ntop(family, ts->get_from_address(ts).ptr, from,
					   sizeof(from)) &&
			 inet_ntop(family, ts->get_to_address(ts).ptr, to, sizeof(to)))
	{
		written = snprintf(buf + used, len - used, "%s = \"%s-%s\"\n", key,
						   from, to);
	}
	else
	{
		written = -1;
	}
	DESTROY_IF(net);
	return written > 0 && (size_t)written < len - used;
}

/**
 * Appends the port selector of a TCP/UDP/SCTP traffic selector.
 */
static bool ts_ports_toml(traffic_selector_t *ts, const char *key, char *buf,
						  size_t len)
{
	uint16_t from = ts->get_from_port(ts), to = ts->get_to_port(ts);
	size_t used = strlen(buf);
	int written;

	if (from == 0 && to == 65535)
	{
		return TRUE;
	}
	if (from == to)
	{
		written = snprintf(buf + used, len - used, "%s = %u\n", key, from);
	}
	else
	{
		written = snprintf(buf + used, len - used, "%s = \"%u-%u\"\n", key,
						   from, to);
	}
	return written > 0 && (size_t)written < len - used;
}

/**
 * How specific a selector pair is: the library's first match wins, so more
 * specific policies go first (as the kernel's priorities order them).
 */
static int specificity(traffic_selector_t *src_ts, traffic_selector_t *dst_ts)
{
	host_t *net = NULL;
	uint8_t src_mask = 0, dst_mask = 0;
	int score;

	src_ts->to_subnet(src_ts, &net, &src_mask);
	DESTROY_IF(net);
	net = NULL;
	dst_ts->to_subnet(dst_ts, &net, &dst_mask);
	DESTROY_IF(net);
	score = (src_mask + dst_mask) * 4;
	if (src_ts->get_protocol(src_ts) || dst_ts->get_protocol(dst_ts))
	{
		score += 2;
	}
	if (src_ts->get_from_port(src_ts) != 0 ||
		src_ts->get_to_port(src_ts) != 65535 ||
		dst_ts->get_from_port(dst_ts) != 0 ||
		dst_ts->get_to_port(dst_ts) != 65535)
	{
		score += 1;
	}
	return score;
}

/**
 * Writes the library's policy table text (one [[policy]] body) for a charon
 * policy. For an outbound policy the library's `local` is the packet's
 * source (charon's src_ts); for an inbound one its destination (charon's
 * dst_ts of a POLICY_IN).
 */
static bool policy_toml(dataplane_policy_t *policy, const char *sa_name,
						char *buf, size_t len)
{
	traffic_selector_t *local, *remote;
	uint8_t protocol;
	size_t used;
	int written;

	if (policy->dir == POLICY_OUT)
	{
		local = policy->src_ts;
		remote = policy->dst_ts;
	}
	else
	{
		local = policy->dst_ts;
		remote = policy->src_ts;
	}
	written = snprintf(buf, len, "name = \"%s\"\ndirection = \"%s\"\n"
					   "action = \"protect\"\nsa = \"%s\"\n", policy->name,
					   policy->dir == POLICY_OUT ? "outbound" : "inbound",
					   sa_name);
	if (written < 0 || (size_t)written >= len ||
		!ts_addresses_toml(local, "local", buf, len) ||
		!ts_addresses_toml(remote, "remote", buf, len))
	{
		return FALSE;
	}
	/* "any" protocol is 0 in charon; one side may be any */
	protocol = max(local->get_protocol(local), remote->get_protocol(remote));
	if (!protocol)
	{
		return TRUE;
	}
	used = strlen(buf);
	written = snprintf(buf + used, len - used, "protocol = %u\n", protocol);
	if (written < 0 || (size_t)written >= len - used)
	{
		return FALSE;
	}
	switch (protocol)
	{
		case IPPROTO_TCP:
		case IPPROTO_UDP:
		case IPPROTO_SCTP:
			return ts_ports_toml(local, "local_port", buf, len) &&
				   ts_ports_toml(remote, "remote_port", buf, len);
		case IPPROTO_ICMP:
		case IPPROTO_ICMPV6:
		{
			/* charon keeps an ICMP type in the high byte of a "port", the
			 * code in the low byte (RFC 4301 §4.4.1.1); the library takes
			 * one type and code, or any */
			traffic_selector_t *ts = remote;
			uint16_t from, to;

			if (local->get_from_port(local) != 0 ||
				local->get_to_port(local) != 65535)
			{
				ts = local;
			}
			from = ts->get_from_port(ts);
			to = ts->get_to_port(ts);
			if (from == 0 && to == 65535)
			{
				return TRUE;
			}
			used = strlen(buf);
			if ((from >> 8) != (to >> 8))
			{
				DBG1(DBG_KNL, "kernel-dataplane: ICMP type range %u-%u of "
					 "policy %s widened to any type", from >> 8, to >> 8,
					 policy->name);
				return TRUE;
			}
			if ((from & 0xff) == 0 && (to & 0xff) == 0xff)
			{
				written = snprintf(buf + used, len - used,
								   "icmp_type = %u\n", from >> 8);
			}
			else
			{
				written = snprintf(buf + used, len - used,
								   "icmp_type = %u\nicmp_code = %u\n",
								   from >> 8, from & 0xff);
			}
			return written > 0 && (size_t)written < len - used;
		}
		default:
			return TRUE;
	}
}

/**
 * Finds the SA a policy of charon's uses: by SPI, direction and (outbound)
 * peer. Call with gw->mutex held.
 */
static dataplane_sa_t *find_policy_sa(private_kernel_dataplane_ipsec_t *this,
									  policy_dir_t dir,
									  kernel_ipsec_manage_policy_t *data)
{
	enumerator_t *enumerator;
	dataplane_sa_t *sa, *found = NULL;
	bool inbound = dir == POLICY_IN;

	if (!data->sa->esp.use || !data->sa->esp.spi)
	{
		return NULL;
	}
	enumerator = this->gw->sas->create_enumerator(this->gw->sas);
	while (enumerator->enumerate(enumerator, NULL, &sa))
	{
		if (sa->spi == data->sa->esp.spi && sa->inbound == inbound &&
			(inbound || sa->dst->ip_equals(sa->dst, data->dst)))
		{
			found = sa;
			break;
		}
	}
	enumerator->destroy(enumerator);
	return found;
}

static dataplane_policy_t *find_policy(private_kernel_dataplane_ipsec_t *this,
									   kernel_ipsec_policy_id_t *id)
{
	enumerator_t *enumerator;
	dataplane_policy_t *policy, *found = NULL;

	enumerator = this->policies->create_enumerator(this->policies);
	while (enumerator->enumerate(enumerator, &policy))
	{
		if (policy->dir == id->dir &&
			policy->src_ts->equals(policy->src_ts, id->src_ts) &&
			policy->dst_ts->equals(policy->dst_ts, id->dst_ts))
		{
			found = policy;
			break;
		}
	}
	enumerator->destroy(enumerator);
	return found;
}

/**
 * Takes a reference to the exclude route for `peer`, installing it first:
 * a host route via the next hop the host uses towards the peer now. Call
 * with policy_mutex held, before the route into the TUN device exists.
 *
 * @return		the exclude route, NULL (logged) when there is no next hop
 *				or the route cannot be installed
 */
static exclude_route_t *take_exclude_route(
							private_kernel_dataplane_ipsec_t *this, host_t *peer)
{
	enumerator_t *enumerator;
	exclude_route_t *exclude, *found = NULL;
	chunk_t addr = peer->get_address(peer);
	status_t status;

	enumerator = this->excludes->create_enumerator(this->excludes);
	while (enumerator->enumerate(enumerator, &exclude))
	{
		if (exclude->peer->ip_equals(exclude->peer, peer))
		{
			found = exclude;
			break;
		}
	}
	enumerator->destroy(enumerator);
	if (found)
	{
		found->refs++;
		return found;
	}
	INIT(exclude,
		.refs = 1,
	);
	exclude->gateway = charon->kernel->get_nexthop(charon->kernel, peer, -1,
												   NULL, &exclude->if_name);
	exclude->src = charon->kernel->get_source_addr(charon->kernel, peer, NULL);
	if (!exclude->gateway || !exclude->if_name || !exclude->src)
	{
		DBG1(DBG_KNL, "kernel-dataplane: no next hop towards the peer %H: no "
			 "exclude route", peer);
		goto failed;
	}
	status = charon->kernel->add_route(charon->kernel, addr, addr.len * 8,
									   exclude->gateway, exclude->src,
									   exclude->if_name, FALSE);
	if (status != SUCCESS && status != ALREADY_DONE)
	{
		DBG1(DBG_KNL, "kernel-dataplane: installing exclude route %H via %H "
			 "dev %s failed", peer, exclude->gateway, exclude->if_name);
		goto failed;
	}
	exclude->installed = status == SUCCESS;
	exclude->peer = peer->clone(peer);
	DBG2(DBG_KNL, "kernel-dataplane: exclude route %H via %H dev %s", peer,
		 exclude->gateway, exclude->if_name);
	this->excludes->insert_last(this->excludes, exclude);
	return exclude;

failed:
	DESTROY_IF(exclude->gateway);
	DESTROY_IF(exclude->src);
	free(exclude->if_name);
	free(exclude);
	return NULL;
}

/**
 * Drops a reference to an exclude route; the last one removes it. Call with
 * policy_mutex held, after the route into the TUN device is gone.
 */
static void release_exclude_route(private_kernel_dataplane_ipsec_t *this,
								  exclude_route_t *exclude)
{
	chunk_t addr;

	if (!exclude || --exclude->refs > 0)
	{
		return;
	}
	this->excludes->remove(this->excludes, exclude, NULL);
	addr = exclude->peer->get_address(exclude->peer);
	if (exclude->installed &&
		charon->kernel->del_route(charon->kernel, addr, addr.len * 8,
								  exclude->gateway, exclude->src,
								  exclude->if_name, FALSE) != SUCCESS)
	{
		DBG1(DBG_KNL, "kernel-dataplane: removing exclude route %H failed",
			 exclude->peer);
	}
	exclude->peer->destroy(exclude->peer);
	exclude->gateway->destroy(exclude->gateway);
	exclude->src->destroy(exclude->src);
	free(exclude->if_name);
	free(exclude);
}

/**
 * Routes the remote selector of an outbound policy into the TUN device, with
 * the local address inside the local selector as source (as kernel-libipsec
 * does). Call with policy_mutex held (not gw->mutex: charon->kernel may take
 * its own locks).
 */
static void install_route(private_kernel_dataplane_ipsec_t *this,
						  dataplane_policy_t *policy, host_t *peer)
{
	host_t *src_ip = NULL, *net = NULL;
	uint8_t prefixlen = 0;
	bool is_virtual = FALSE;
	char *tun_name = this->gw->tun->name;

	if (charon->kernel->get_address_by_ts(charon->kernel, policy->src_ts,
										  &src_ip, &is_virtual) != SUCCESS)
	{
		DBG1(DBG_KNL, "kernel-dataplane: no local address in %R: no route "
			 "for %R", policy->src_ts, policy->dst_ts);
		return;
	}
	if (policy->dst_ts->includes(policy->dst_ts, peer))
	{
		/* routing the peer's own address into the tunnel would carry IKE
		 * and ESP into it: a host route keeps the peer where it is */
		policy->exclude = take_exclude_route(this, peer);
		if (!policy->exclude)
		{
			DBG1(DBG_KNL, "kernel-dataplane: no route for %R: it covers the "
				 "peer %H", policy->dst_ts, peer);
			src_ip->destroy(src_ip);
			return;
		}
	}
	policy->dst_ts->to_subnet(policy->dst_ts, &net, &prefixlen);
	switch (charon->kernel->add_route(charon->kernel, net->get_address(net),
									  prefixlen, NULL, src_ip, tun_name,
									  FALSE))
	{
		case SUCCESS:
			DBG2(DBG_KNL, "kernel-dataplane: route %R src %H dev %s",
				 policy->dst_ts, src_ip, tun_name);
			policy->route_net = net;
			policy->route_prefixlen = prefixlen;
			policy->route_src = src_ip;
			return;
		case ALREADY_DONE:
			/* someone else's route: not ours to remove */
			break;
		default:
			DBG1(DBG_KNL, "kernel-dataplane: installing route %R src %H dev "
				 "%s failed", policy->dst_ts, src_ip, tun_name);
			release_exclude_route(this, policy->exclude);
			policy->exclude = NULL;
			break;
	}
	net->destroy(net);
	src_ip->destroy(src_ip);
}

/**
 * Hands the route of a policy being removed to another OUT policy of ours
 * that routes the same subnet (several selector pairs of one subnet, e.g.
 * different protocols or ports, share one route: the second add_route finds
 * it there). Call with policy_mutex held, with `policy` out of the list.
 *
 * @return		TRUE if another policy took the route over
 */
static bool hand_over_route(private_kernel_dataplane_ipsec_t *this,
							dataplane_policy_t *policy)
{
	enumerator_t *enumerator;
	dataplane_policy_t *other;
	host_t *net = NULL;
	uint8_t prefixlen = 0;
	bool handed = FALSE;

	enumerator = this->policies->create_enumerator(this->policies);
	while (!handed && enumerator->enumerate(enumerator, &other))
	{
		if (other->dir != POLICY_OUT || other->route_net)
		{
			continue;
		}
		other->dst_ts->to_subnet(other->dst_ts, &net, &prefixlen);
		if (prefixlen == policy->route_prefixlen &&
			net->ip_equals(net, policy->route_net))
		{
			other->route_net = policy->route_net;
			other->route_prefixlen = policy->route_prefixlen;
			other->route_src = policy->route_src;
			policy->route_net = NULL;
			policy->route_src = NULL;
			handed = TRUE;
		}
		net->destroy(net);
		net = NULL;
	}
	enumerator->destroy(enumerator);
	return handed;
}

static void uninstall_route(private_kernel_dataplane_ipsec_t *this,
							dataplane_policy_t *policy)
{
	if (policy->route_net && !hand_over_route(this, policy))
	{
		if (charon->kernel->del_route(charon->kernel,
					policy->route_net->get_address(policy->route_net),
					policy->route_prefixlen, NULL, policy->route_src,
					this->gw->tun->name, FALSE) != SUCCESS)
		{
			DBG1(DBG_KNL, "kernel-dataplane: removing route %R failed",
				 policy->dst_ts);
		}
		policy->route_net->destroy(policy->route_net);
		policy->route_src->destroy(policy->route_src);
		policy->route_net = NULL;
		policy->route_src = NULL;
	}
	/* after the route into the TUN device: the peer never routes into it */
	release_exclude_route(this, policy->exclude);
	policy->exclude = NULL;
}

/**
 * Installs (or replaces) the library policy for `policy`, naming `sa`.
 * Call with policy_mutex held; takes gw->mutex.
 */
static ipsec_status install_library_policy(
	private_kernel_dataplane_ipsec_t *this, dataplane_policy_t *policy,
	dataplane_sa_t *sa, bool replace)
{
	char toml[1024];
	const char *before = DATAPLANE_DENY_ALL;
	enumerator_t *enumerator;
	dataplane_policy_t *other;
	ipsec_status status;

	if (!policy_toml(policy, sa->name, toml, sizeof(toml)))
	{
		DBG1(DBG_KNL, "kernel-dataplane: policy %R === %R does not fit the "
			 "library's policy text", policy->src_ts, policy->dst_ts);
		return IPSEC_ERR_CONFIG;
	}
	if (!replace)
	{
		/* before the first installed policy that is less specific */
		enumerator = this->policies->create_enumerator(this->policies);
		while (enumerator->enumerate(enumerator, &other))
		{
			if (other != policy && other->specificity < policy->specificity)
			{
				before = other->name;
				break;
			}
		}
		enumerator->destroy(enumerator);
	}
	this->gw->mutex->lock(this->gw->mutex);
	if (replace)
	{
		status = ipsec_gateway_replace_policy(this->gw->gateway, toml);
	}
	else
	{
		status = ipsec_gateway_install_policy(this->gw->gateway, toml, before);
	}
	if (status != IPSEC_OK)
	{
		dataplane_log_failure(replace ? "replacing a policy"
									  : "installing a policy", status);
	}
	this->gw->mutex->unlock(this->gw->mutex);
	if (status == IPSEC_OK)
	{
		DBG2(DBG_KNL, "kernel-dataplane: policy %s before %s:\n%s",
			 policy->name, replace ? "(in place)" : before, toml);
	}
	return status;
}

/**
 * Puts a new policy into the list at its place in the library's order.
 */
static void insert_policy_in_order(private_kernel_dataplane_ipsec_t *this,
								   dataplane_policy_t *policy)
{
	enumerator_t *enumerator;
	dataplane_policy_t *other;
	bool inserted = FALSE;

	enumerator = this->policies->create_enumerator(this->policies);
	while (enumerator->enumerate(enumerator, &other))
	{
		if (other->specificity < policy->specificity)
		{
			this->policies->insert_before(this->policies, enumerator, policy);
			inserted = TRUE;
			break;
		}
	}
	enumerator->destroy(enumerator);
	if (!inserted)
	{
		this->policies->insert_last(this->policies, policy);
	}
}

METHOD(kernel_ipsec_t, add_policy, status_t,
	private_kernel_dataplane_ipsec_t *this, kernel_ipsec_policy_id_t *id,
	kernel_ipsec_manage_policy_t *data)
{
	dataplane_policy_t *policy;
	dataplane_sa_t *sa;
	char sa_name[DATAPLANE_SA_NAME_LEN] = "";
	uint32_t sa_reqid = 0;
	ipsec_status status;

	if (data->type != POLICY_IPSEC)
	{
		/* PASS/DROP shunts: only traffic routed into the TUN device reaches
		 * the library, and charon routes only IPsec policies there, so a
		 * shunt already has its effect through the host's routing */
		DBG2(DBG_KNL, "kernel-dataplane: %s policy %R === %R left to the "
			 "host's routing", data->type == POLICY_PASS ? "PASS" : "DROP",
			 id->src_ts, id->dst_ts);
		return data->type == POLICY_PASS ? SUCCESS : NOT_SUPPORTED;
	}
	if (id->dir == POLICY_FWD)
	{
		/* The TUN device makes forwarding invisible: forwarded packets for
		 * the remote side are routed into it like local ones and meet the
		 * OUT policy; decrypted packets are written to it and the host
		 * forwards them after the IN policy (same selectors as FWD) was
		 * checked by the library. */
		return SUCCESS;
	}
	if (id->mark.value || id->mark.mask || id->if_id || id->label)
	{
		DBG1(DBG_KNL, "kernel-dataplane: refusing policy %R === %R: marks, "
			 "interface IDs and labels are not supported", id->src_ts,
			 id->dst_ts);
		return FAILED;
	}

	this->gw->mutex->lock(this->gw->mutex);
	sa = find_policy_sa(this, id->dir, data);
	if (sa)
	{
		memcpy(sa_name, sa->name, sizeof(sa_name));
		sa_reqid = sa->reqid;
	}
	this->gw->mutex->unlock(this->gw->mutex);
	if (!sa)
	{
		/* a trap policy (start_action=trap) has no SA yet: the library
		 * would have to raise acquires, which it does not */
		DBG1(DBG_KNL, "kernel-dataplane: refusing policy %R === %R %N: no "
			 "installed SA with SPI %.8x (trap policies and acquires are not "
			 "supported)", id->src_ts, id->dst_ts, policy_dir_names, id->dir,
			 ntohl(data->sa->esp.spi));
		return NOT_SUPPORTED;
	}

	this->policy_mutex->lock(this->policy_mutex);
	policy = find_policy(this, id);
	if (policy)
	{
		/* the same policy for another CHILD_SA: a rekeying (same reqid) is
		 * already served through the library's rekey chain; another reqid
		 * takes the policy over, as the kernel's newest SA would */
		if (policy->reqid != sa_reqid)
		{
			dataplane_sa_t named = { .reqid = sa_reqid };

			memcpy(named.name, sa_name, sizeof(named.name));
			if (install_library_policy(this, policy, &named, TRUE) != IPSEC_OK)
			{
				this->policy_mutex->unlock(this->policy_mutex);
				return FAILED;
			}
			policy->reqid = sa_reqid;
		}
		policy->refs++;
		this->policy_mutex->unlock(this->policy_mutex);
		return SUCCESS;
	}

	INIT(policy,
		.dir = id->dir,
		.src_ts = id->src_ts->clone(id->src_ts),
		.dst_ts = id->dst_ts->clone(id->dst_ts),
		.reqid = sa_reqid,
		.refs = 1,
		.specificity = specificity(id->src_ts, id->dst_ts),
	);
	snprintf(policy->name, sizeof(policy->name), "charon-%s-%u",
			 id->dir == POLICY_OUT ? "out" : "in", ++this->next_policy_number);
	{
		dataplane_sa_t named = { .reqid = sa_reqid };

		memcpy(named.name, sa_name, sizeof(named.name));
		status = install_library_policy(this, policy, &named, FALSE);
	}
	if (status != IPSEC_OK)
	{
		this->policy_mutex->unlock(this->policy_mutex);
		policy_destroy(policy);
		return FAILED;
	}
	insert_policy_in_order(this, policy);
	if (id->dir == POLICY_OUT)
	{
		install_route(this, policy, data->dst);
	}
	this->policy_mutex->unlock(this->policy_mutex);
	return SUCCESS;
}

METHOD(kernel_ipsec_t, query_policy, status_t,
	private_kernel_dataplane_ipsec_t *this, kernel_ipsec_policy_id_t *id,
	kernel_ipsec_query_policy_t *data, time_t *use_time)
{
	enumerator_t *enumerator;
	dataplane_policy_t *policy;
	dataplane_sa_t *sa;
	ipsec_gateway_sa info;
	uint64_t newest = 0;
	bool used = FALSE;

	/* a library policy names the SA of its reqid (and the library follows
	 * that SA's rekey chain): its traffic is the traffic of the reqid's SAs
	 * in its direction, so its last use is the newest of theirs */
	this->policy_mutex->lock(this->policy_mutex);
	policy = find_policy(this, id);
	if (!policy)
	{
		this->policy_mutex->unlock(this->policy_mutex);
		return NOT_FOUND;
	}
	this->gw->mutex->lock(this->gw->mutex);
	enumerator = this->gw->sas->create_enumerator(this->gw->sas);
	while (enumerator->enumerate(enumerator, NULL, &sa))
	{
		if (sa->reqid == policy->reqid &&
			sa->inbound == (policy->dir == POLICY_IN) &&
			ipsec_gateway_find_sa(this->gw->gateway, sa->name, &info) ==
				IPSEC_OK && info.stats.packets)
		{
			newest = max(newest, info.stats.last_used_ns);
			used = TRUE;
		}
	}
	enumerator->destroy(enumerator);
	this->gw->mutex->unlock(this->gw->mutex);
	this->policy_mutex->unlock(this->policy_mutex);
	if (use_time)
	{	/* monotonic seconds, as query_sa gives them; 0: never used */
		*use_time = used ? (time_t)(newest / 1000000000ULL) : 0;
	}
	return SUCCESS;
}

/**
 * Removes a policy from the library and its route. Call with policy_mutex
 * held, with the policy already out of the list.
 */
static void remove_policy(private_kernel_dataplane_ipsec_t *this,
						  dataplane_policy_t *policy)
{
	ipsec_status status;

	this->gw->mutex->lock(this->gw->mutex);
	status = ipsec_gateway_remove_policy(this->gw->gateway, policy->name);
	if (status != IPSEC_OK)
	{
		dataplane_log_failure("removing a policy", status);
	}
	this->gw->mutex->unlock(this->gw->mutex);
	uninstall_route(this, policy);
	policy_destroy(policy);
}

METHOD(kernel_ipsec_t, del_policy, status_t,
	private_kernel_dataplane_ipsec_t *this, kernel_ipsec_policy_id_t *id,
	kernel_ipsec_manage_policy_t *data)
{
	dataplane_policy_t *policy;

	if (data->type != POLICY_IPSEC || id->dir == POLICY_FWD)
	{
		return SUCCESS;
	}
	this->policy_mutex->lock(this->policy_mutex);
	policy = find_policy(this, id);
	if (!policy)
	{
		this->policy_mutex->unlock(this->policy_mutex);
		return NOT_FOUND;
	}
	if (--policy->refs == 0)
	{
		this->policies->remove(this->policies, policy, NULL);
		remove_policy(this, policy);
	}
	this->policy_mutex->unlock(this->policy_mutex);
	return SUCCESS;
}

METHOD(kernel_ipsec_t, flush_policies, status_t,
	private_kernel_dataplane_ipsec_t *this)
{
	dataplane_policy_t *policy;

	this->policy_mutex->lock(this->policy_mutex);
	while (this->policies->remove_first(this->policies,
										(void**)&policy) == SUCCESS)
	{
		remove_policy(this, policy);
	}
	this->policy_mutex->unlock(this->policy_mutex);
	return SUCCESS;
}

METHOD(kernel_ipsec_t, bypass_socket, bool,
	private_kernel_dataplane_ipsec_t *this, int fd, int family)
{
	/* IKE never enters the TUN device: only the remote selectors are routed
	 * there, and routes covering the peer are refused (install_route) */
	return TRUE;
}

METHOD(kernel_ipsec_t, enable_udp_decap, bool,
	private_kernel_dataplane_ipsec_t *this, int fd, int family, uint16_t port)
{
	/* nothing to enable: ESP in UDP reaches the plugin through charon's
	 * receiver (its ESP callback), not through the kernel */
	return TRUE;
}

METHOD(kernel_ipsec_t, destroy, void,
	private_kernel_dataplane_ipsec_t *this)
{
	flush_policies(this);
	this->gw->mutex->lock(this->gw->mutex);
	delete_all_sas(this);
	this->gw->mutex->unlock(this->gw->mutex);
	this->policies->destroy(this->policies);
	/* empty: every policy released its exclude route */
	this->excludes->destroy(this->excludes);
	this->policy_mutex->destroy(this->policy_mutex);
	free(this);
}

kernel_dataplane_ipsec_t *kernel_dataplane_ipsec_create(void)
{
	private_kernel_dataplane_ipsec_t *this;

	if (!kernel_dataplane_gateway)
	{
		DBG1(DBG_KNL, "kernel-dataplane: plugin not initialised");
		return NULL;
	}
	INIT(this,
		.public = {
			.interface = {
				.get_features = _get_features,
				.get_spi = _get_spi,
				.get_cpi = _get_cpi,
				.add_sa  = _add_sa,
				.update_sa = _update_sa,
				.query_sa = _query_sa,
				.del_sa = _del_sa,
				.flush_sas = _flush_sas,
				.add_policy = _add_policy,
				.query_policy = _query_policy,
				.del_policy = _del_policy,
				.flush_policies = _flush_policies,
				.bypass_socket = _bypass_socket,
				.enable_udp_decap = _enable_udp_decap,
				.destroy = _destroy,
			},
		},
		.gw = kernel_dataplane_gateway,
		.policy_mutex = mutex_create(MUTEX_TYPE_DEFAULT),
		.policies = linked_list_create(),
		.excludes = linked_list_create(),
	);
	return &this->public;
}
