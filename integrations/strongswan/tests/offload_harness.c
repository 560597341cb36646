/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Drives kernel_dataplane_offload.c from test_offload.py, which builds the
 * packets with scapy and checks what comes out with scapy's own checksums.
 *
 *   offload_harness tso   stdin: virtio_net_hdr + one GSO frame
 *                         stdout: the segments
 *   offload_harness gro   stdin: packets, each behind a 4-byte length
 *                         stdout: what the data path would write to the TUN
 *                         device, in order
 *
 * Every output record is one byte ('S' segment, 'F' frame with a
 * virtio_net_hdr, 'P' packet written as it came), a 4-byte length (network
 * order) and the bytes. Exit status 2: the frame was refused.
 */
#include "../kernel_dataplane/kernel_dataplane_offload.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint8_t input[1 << 20];

static void emit(char kind, const uint8_t *data, size_t len)
{
	uint32_t n = htonl((uint32_t)len);

	fputc(kind, stdout);
	fwrite(&n, sizeof(n), 1, stdout);
	fwrite(data, 1, len, stdout);
}

static void flush(dataplane_gro_t *gro)
{
	const uint8_t *frame;
	size_t len = dataplane_gro_flush(gro, &frame);

	if (len)
	{
		emit('F', frame, len);
	}
}

static int tso(size_t len)
{
	static uint8_t out[65536];
	struct virtio_net_hdr vnet;
	dataplane_tso_t tso;
	unsigned segments, i;

	if (len < DATAPLANE_VNET_HDR_LEN)
	{
		return 2;
	}
	memcpy(&vnet, input, sizeof(vnet));
	segments = dataplane_tso_prepare(&tso, &vnet, input + sizeof(vnet),
									 len - sizeof(vnet));
	if (segments == 0)
	{
		return 2;
	}
	for (i = 0; i < segments; i++)
	{
		emit('S', out, dataplane_tso_segment(&tso, input + sizeof(vnet), i, out));
	}
	return 0;
}

static int gro(size_t len)
{
	dataplane_gro_t gro;
	size_t at = 0;
	uint32_t n;

	if (!dataplane_gro_init(&gro))
	{
		return 1;
	}
	while (at + 4 <= len)
	{
		memcpy(&n, input + at, 4);
		n = ntohl(n);
		at += 4;
		if (n > len - at)
		{
			break;
		}
		switch (dataplane_gro_add(&gro, input + at, n))
		{
			case DATAPLANE_GRO_HELD:
				break;
			case DATAPLANE_GRO_FLUSH_FIRST:
				flush(&gro);
				if (dataplane_gro_add(&gro, input + at, n) == DATAPLANE_GRO_HELD)
				{
					break;
				}
				emit('P', input + at, n);
				break;
			case DATAPLANE_GRO_BYPASS:
				flush(&gro);
				emit('P', input + at, n);
				break;
		}
		at += n;
	}
	flush(&gro);
	dataplane_gro_free(&gro);
	return 0;
}

int main(int argc, char *argv[])
{
	size_t len = fread(input, 1, sizeof(input), stdin);

	if (argc != 2)
	{
		return 1;
	}
	if (strcmp(argv[1], "tso") == 0)
	{
		return tso(len);
	}
	if (strcmp(argv[1], "gro") == 0)
	{
		return gro(len);
	}
	return 1;
}
