/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the
 * Free Software Foundation; either version 2 of the License, or (at your
 * option) any later version. See ../COPYING.
 */

#include "kernel_dataplane_tun.h"
#include "kernel_dataplane_offload.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/if_tun.h>

#include <library.h>
#include <utils/debug.h>

/** Opens /dev/net/tun as device `name` with `flags`; -1 on failure. */
static int open_tun(const char *name, short flags, char *actual_name)
{
	struct ifreq ifr;
	int fd;

	fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0)
	{
		DBG1(DBG_KNL, "kernel-dataplane: opening /dev/net/tun failed: %s",
			 strerror(errno));
		return -1;
	}
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = flags;
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0)
	{
		DBG1(DBG_KNL, "kernel-dataplane: creating TUN device %s failed: %s",
			 name, strerror(errno));
		close(fd);
		return -1;
	}
	memcpy(actual_name, ifr.ifr_name, IFNAMSIZ);
	actual_name[IFNAMSIZ - 1] = '\0';
	return fd;
}

/** Sets the MTU and the UP flag of device `name`. */
static bool configure(const char *name, int mtu)
{
	struct ifreq ifr;
	bool ok = false;
	int sock;

	sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
	{
		return false;
	}
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	ifr.ifr_mtu = mtu;
	if (ioctl(sock, SIOCSIFMTU, &ifr) == 0 &&
		ioctl(sock, SIOCGIFFLAGS, &ifr) == 0)
	{
		ifr.ifr_flags |= IFF_UP;
		ok = ioctl(sock, SIOCSIFFLAGS, &ifr) == 0;
	}
	if (!ok)
	{
		DBG1(DBG_KNL, "kernel-dataplane: setting MTU %d and bringing up %s "
			 "failed: %s", mtu, name, strerror(errno));
	}
	close(sock);
	return ok;
}

dataplane_tun_t *dataplane_tun_create(const char *name, int mtu, bool offload)
{
	dataplane_tun_t *this;
	int header = DATAPLANE_VNET_HDR_LEN;

	INIT(this,
		.fd = -1,
	);
	if (offload)
	{
		this->fd = open_tun(name, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR,
							this->name);
		if (this->fd >= 0 &&
			(ioctl(this->fd, TUNSETVNETHDRSZ, &header) < 0 ||
			 ioctl(this->fd, TUNSETOFFLOAD,
				   TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) < 0))
		{
			DBG1(DBG_KNL, "kernel-dataplane: TUN offloads not available (%s): "
				 "one packet per read and write", strerror(errno));
			close(this->fd);
			this->fd = -1;
		}
		this->offload = this->fd >= 0;
	}
	if (this->fd < 0)
	{
		this->fd = open_tun(name, IFF_TUN | IFF_NO_PI, this->name);
	}
	if (this->fd < 0 || !configure(this->name, mtu))
	{
		dataplane_tun_destroy(this);
		return NULL;
	}
	return this;
}

void dataplane_tun_destroy(dataplane_tun_t *tun)
{
	if (tun)
	{
		if (tun->fd >= 0)
		{
			close(tun->fd);
		}
		free(tun);
	}
}
