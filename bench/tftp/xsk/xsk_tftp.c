// The AF_XDP way to carry TFTP windows, built to be measured (issue 18, item 3), not served:
// a TFTP read server on an AF_XDP socket, so bench/tftp can put a number on it beside the TC
// program's clones and userspace GSO. It is not part of Bootfabric and never ships.
//
// What it does: libxdp's default XDP program redirects every frame of queue 0 of the
// interface to the socket (copy mode: veth has no zero-copy); this process answers ARP for
// its address, read requests on port 69 (octet, options blksize and windowsize, an OACK from
// a transfer port of its own), and every ACK with the next window, each frame built in UMEM
// and sent with one kick (sendto) per window. What it leaves out, because a lossless veth in
// a benchmark never needs it: timeouts and retransmission (a duplicate ACK resends the
// window), errors, netascii, IPv6. The UDP checksum is 0 (none, legal for IPv4): over veth
// the other ways skip it too (the stack leaves it to an offload veth never performs).
//
// Usage: xsk_tftp IFNAME IPV4 ROOT
// Stops on SIGTERM or SIGINT. Prints one line of counters when it stops.

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xdp/xsk.h>

#define FRAMES 8192
#define FRAME_SIZE 4096
#define RING 4096
#define MAX_XFERS 4096
#define PORT_BASE 50000
#define WINDOW_MAX 64

struct xfer {
	int live;
	uint8_t mac[6];
	uint32_t ip;      // client, network order
	uint16_t port;    // client, network order
	const uint8_t *data;
	uint64_t size, blocks, acked, sent;
	uint32_t blksize, window;
	int oack;
};

static volatile sig_atomic_t stop;
static struct xsk_ring_prod fill, tx;
static struct xsk_ring_cons comp, rx;
static struct xsk_socket *xsk;
static uint8_t *umem_area;
static uint64_t free_frames[FRAMES];
static uint32_t n_free;
static uint8_t my_mac[6];
static uint32_t my_ip;
static const char *root;
static struct xfer xfers[MAX_XFERS];
static uint32_t next_port;
static uint64_t n_acks, n_blocks, n_kicks, n_rrq;

static void on_signal(int sig) { (void)sig; stop = 1; }

static uint64_t frame_alloc(void) { return n_free ? free_frames[--n_free] : UINT64_MAX; }
static void frame_free(uint64_t a) { free_frames[n_free++] = a & ~(uint64_t)(FRAME_SIZE - 1); }

static uint16_t csum16(const void *p, size_t n) {
	const uint8_t *b = p;
	uint32_t s = 0;
	for (size_t i = 0; i + 1 < n; i += 2) s += (uint32_t)b[i] << 8 | b[i + 1];
	if (n & 1) s += (uint32_t)b[n - 1] << 8;
	while (s >> 16) s = (s & 0xffff) + (s >> 16);
	return htons((uint16_t)~s);
}

// Completed transmissions give their frames back.
static void reap(void) {
	uint32_t idx, n = xsk_ring_cons__peek(&comp, RING, &idx);
	for (uint32_t i = 0; i < n; i++) frame_free(*xsk_ring_cons__comp_addr(&comp, idx + i));
	if (n) xsk_ring_cons__release(&comp, n);
}

// Ethernet, IPv4 (DF, ID 0, TTL 64) and UDP headers for `len` UDP payload bytes at `f`.
static void headers(uint8_t *f, const uint8_t *dmac, uint32_t dip, uint16_t sport,
		    uint16_t dport, uint32_t len) {
	memcpy(f, dmac, 6);
	memcpy(f + 6, my_mac, 6);
	f[12] = 0x08, f[13] = 0x00;
	uint8_t *ip = f + 14;
	uint16_t tot = htons((uint16_t)(20 + 8 + len));
	ip[0] = 0x45, ip[1] = 0;
	memcpy(ip + 2, &tot, 2);
	ip[4] = ip[5] = 0;
	ip[6] = 0x40, ip[7] = 0;
	ip[8] = 64, ip[9] = 17, ip[10] = ip[11] = 0;
	memcpy(ip + 12, &my_ip, 4);
	memcpy(ip + 16, &dip, 4);
	uint16_t c = csum16(ip, 20);
	memcpy(ip + 10, &c, 2);
	uint8_t *udp = ip + 20;
	uint16_t ul = htons((uint16_t)(8 + len));
	memcpy(udp, &sport, 2);
	memcpy(udp + 2, &dport, 2);
	memcpy(udp + 4, &ul, 2);
	udp[6] = udp[7] = 0;
}

// Queues one frame of `len` bytes already written at `addr`.
static int queue(uint64_t addr, uint32_t len) {
	uint32_t idx;
	if (xsk_ring_prod__reserve(&tx, 1, &idx) != 1) return -1;
	struct xdp_desc *d = xsk_ring_prod__tx_desc(&tx, idx);
	d->addr = addr, d->len = len;
	xsk_ring_prod__submit(&tx, 1);
	return 0;
}

static void kick(void) {
	n_kicks++;
	while (sendto(xsk_socket__fd(xsk), NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 && errno == EAGAIN) {
		reap();
	}
}

static uint64_t frame_or_reap(void) {
	uint64_t a = frame_alloc();
	while (a == UINT64_MAX && !stop) {
		kick();
		reap();
		a = frame_alloc();
	}
	return a;
}

// Blocks first..last of `x` from transfer port `sport`, one kick for all of them.
static void send_blocks(struct xfer *x, uint16_t sport, uint64_t first, uint64_t last) {
	for (uint64_t b = first; b <= last; b++) {
		uint64_t a = frame_or_reap();
		if (a == UINT64_MAX) return;
		uint64_t off = (b - 1) * x->blksize;
		uint64_t n = off < x->size ? x->size - off : 0;
		if (n > x->blksize) n = x->blksize;
		uint8_t *f = umem_area + a;
		headers(f, x->mac, x->ip, sport, x->port, (uint32_t)(4 + n));
		uint8_t *t = f + 42;
		t[0] = 0, t[1] = 3, t[2] = (uint8_t)(b >> 8), t[3] = (uint8_t)b;
		memcpy(t + 4, x->data + off, n);
		if (queue(a, (uint32_t)(46 + n))) { frame_free(a); break; }
		n_blocks++;
	}
	kick();
}

static void send_oack(struct xfer *x, uint16_t sport) {
	char body[128];
	int n = 2;
	body[0] = 0, body[1] = 6;
	n += sprintf(body + n, "blksize") + 1;
	n += sprintf(body + n, "%u", x->blksize) + 1;
	if (x->window > 1) {
		n += sprintf(body + n, "windowsize") + 1;
		n += sprintf(body + n, "%u", x->window) + 1;
	}
	uint64_t a = frame_or_reap();
	if (a == UINT64_MAX) return;
	uint8_t *f = umem_area + a;
	headers(f, x->mac, x->ip, sport, x->port, (uint32_t)n);
	memcpy(f + 42, body, (size_t)n);
	if (queue(a, (uint32_t)(42 + n))) frame_free(a);
	kick();
}

static void on_rrq(const uint8_t *eth, const uint8_t *ip, const uint8_t *udp, const uint8_t *p,
		   size_t n) {
	n_rrq++;
	char name[256], mode[16];
	const char *s = (const char *)p + 2, *end = (const char *)p + n;
	size_t l = strnlen(s, (size_t)(end - s));
	if (l >= sizeof name || s + l >= end) return;
	memcpy(name, s, l + 1);
	s += l + 1;
	l = strnlen(s, (size_t)(end - s));
	if (l >= sizeof mode || s + l >= end) return;
	memcpy(mode, s, l + 1);
	s += l + 1;
	uint32_t blksize = 512, window = 1;
	while (s < end) {
		const char *k = s;
		l = strnlen(s, (size_t)(end - s));
		if (s + l >= end) break;
		s += l + 1;
		const char *v = s;
		l = strnlen(s, (size_t)(end - s));
		if (s + l >= end) break;
		s += l + 1;
		if (!strcasecmp(k, "blksize")) blksize = (uint32_t)atoi(v);
		if (!strcasecmp(k, "windowsize")) window = (uint32_t)atoi(v);
	}
	if (blksize < 8 || blksize > 1468) blksize = 1468;
	if (window < 1) window = 1;
	if (window > WINDOW_MAX) window = WINDOW_MAX;
	if (strchr(name, '/')) return;
	char path[512];
	snprintf(path, sizeof path, "%s/%s", root, name);
	int fd = open(path, O_RDONLY);
	if (fd < 0) return;
	struct stat st;
	if (fstat(fd, &st)) { close(fd); return; }
	const uint8_t *data = st.st_size ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0) : (const uint8_t *)"";
	close(fd);
	if (data == MAP_FAILED) return;
	for (uint32_t i = 0; i < MAX_XFERS; i++) {
		uint32_t slot = (next_port + i) % MAX_XFERS;
		struct xfer *x = &xfers[slot];
		if (x->live) continue;
		next_port = slot + 1;
		*x = (struct xfer){.live = 1, .data = data, .size = (uint64_t)st.st_size,
				   .blksize = blksize, .window = window, .oack = 1};
		memcpy(x->mac, eth + 6, 6);
		memcpy(&x->ip, ip + 12, 4);
		memcpy(&x->port, udp, 2);
		x->blocks = x->size / blksize + 1;
		send_oack(x, htons((uint16_t)(PORT_BASE + slot)));
		return;
	}
}

static void on_ack(struct xfer *x, uint16_t sport, uint16_t wire) {
	n_acks++;
	if (x->oack) {
		if (wire != 0) return;
		x->oack = 0;
	} else {
		uint64_t delta = (uint16_t)(wire - (uint16_t)x->acked);
		uint64_t b = x->acked + delta;
		if (delta == 0 && x->sent > x->acked) {
			// The client asks again: resend what it has not acknowledged.
		} else if (delta == 0 || b > x->sent) {
			return;
		} else {
			x->acked = b;
		}
	}
	if (x->acked >= x->blocks) {
		if (x->size) munmap((void *)x->data, x->size);
		x->live = 0;
		return;
	}
	uint64_t last = x->acked + x->window;
	if (last > x->blocks) last = x->blocks;
	if (last > x->sent) x->sent = last;
	send_blocks(x, sport, x->acked + 1, last);
}

static void on_arp(const uint8_t *f, uint32_t len) {
	if (len < 42) return;
	const uint8_t *a = f + 14;
	if (a[6] != 0 || a[7] != 1 || memcmp(a + 24, &my_ip, 4)) return;
	uint64_t addr = frame_or_reap();
	if (addr == UINT64_MAX) return;
	uint8_t *o = umem_area + addr;
	memcpy(o, f + 6, 6);
	memcpy(o + 6, my_mac, 6);
	o[12] = 0x08, o[13] = 0x06;
	memcpy(o + 14, a, 6);
	o[20] = 0, o[21] = 2;
	memcpy(o + 22, my_mac, 6);
	memcpy(o + 28, &my_ip, 4);
	memcpy(o + 32, a + 8, 10);
	if (queue(addr, 42)) frame_free(addr);
	kick();
}

static void on_frame(const uint8_t *f, uint32_t len) {
	if (len < 14) return;
	if (f[12] == 0x08 && f[13] == 0x06) return on_arp(f, len);
	if (f[12] != 0x08 || f[13] != 0x00 || len < 42) return;
	const uint8_t *ip = f + 14;
	if (ip[0] != 0x45 || ip[9] != 17 || memcmp(ip + 16, &my_ip, 4)) return;
	const uint8_t *udp = ip + 20;
	uint16_t dport = (uint16_t)(udp[2] << 8 | udp[3]);
	uint32_t ulen = (uint32_t)(udp[4] << 8 | udp[5]);
	if (ulen < 12 || 42 + ulen - 8 > len) return;
	const uint8_t *p = udp + 8;
	uint32_t n = ulen - 8;
	uint16_t op = (uint16_t)(p[0] << 8 | p[1]);
	if (dport == 69 && op == 1) return on_rrq(f, ip, udp, p, n);
	if (dport >= PORT_BASE && dport < PORT_BASE + MAX_XFERS && op == 4) {
		struct xfer *x = &xfers[dport - PORT_BASE];
		if (x->live && !memcmp(&x->ip, ip + 12, 4) && !memcmp(&x->port, udp, 2))
			on_ack(x, htons(dport), (uint16_t)(p[2] << 8 | p[3]));
	}
}

int main(int argc, char **argv) {
	if (argc != 4) {
		fprintf(stderr, "usage: %s IFNAME IPV4 ROOT\n", argv[0]);
		return 2;
	}
	const char *ifname = argv[1];
	root = argv[3];
	if (inet_pton(AF_INET, argv[2], &my_ip) != 1) {
		fprintf(stderr, "%s: not an IPv4 address\n", argv[2]);
		return 2;
	}
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
	if (s < 0 || ioctl(s, SIOCGIFHWADDR, &ifr)) {
		perror("SIOCGIFHWADDR");
		return 1;
	}
	memcpy(my_mac, ifr.ifr_hwaddr.sa_data, 6);
	close(s);

	size_t size = (size_t)FRAMES * FRAME_SIZE;
	umem_area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (umem_area == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	struct xsk_umem *umem;
	struct xsk_umem_config ucfg = {.fill_size = RING, .comp_size = RING,
				       .frame_size = FRAME_SIZE, .frame_headroom = 0};
	int err = xsk_umem__create(&umem, umem_area, size, &fill, &comp, &ucfg);
	if (err) {
		fprintf(stderr, "xsk_umem__create: %s\n", strerror(-err));
		return 1;
	}
	struct xsk_socket_config scfg = {.rx_size = RING, .tx_size = RING,
					 .xdp_flags = XDP_FLAGS_DRV_MODE, .bind_flags = XDP_COPY};
	err = xsk_socket__create(&xsk, ifname, 0, umem, &rx, &tx, &scfg);
	if (err) {
		fprintf(stderr, "xsk_socket__create: %s\n", strerror(-err));
		return 1;
	}
	for (uint32_t i = 0; i < FRAMES; i++) free_frames[n_free++] = (uint64_t)i * FRAME_SIZE;
	uint32_t idx;
	if (xsk_ring_prod__reserve(&fill, RING, &idx) != RING) return 1;
	for (uint32_t i = 0; i < RING; i++) *xsk_ring_prod__fill_addr(&fill, idx + i) = frame_alloc();
	xsk_ring_prod__submit(&fill, RING);

	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	struct pollfd pfd = {.fd = xsk_socket__fd(xsk), .events = POLLIN};
	fprintf(stderr, "xsk_tftp: ready on %s\n", ifname);
	while (!stop) {
		reap();
		if (poll(&pfd, 1, 200) <= 0) continue;
		uint32_t n = xsk_ring_cons__peek(&rx, 64, &idx);
		if (!n) continue;
		uint64_t back[64];
		for (uint32_t i = 0; i < n; i++) {
			const struct xdp_desc *d = xsk_ring_cons__rx_desc(&rx, idx + i);
			on_frame(umem_area + d->addr, d->len);
			back[i] = d->addr & ~(uint64_t)(FRAME_SIZE - 1);
		}
		xsk_ring_cons__release(&rx, n);
		// The receive frames go straight back to the fill ring.
		uint32_t fidx;
		while (xsk_ring_prod__reserve(&fill, n, &fidx) != n) reap();
		for (uint32_t i = 0; i < n; i++) *xsk_ring_prod__fill_addr(&fill, fidx + i) = back[i];
		xsk_ring_prod__submit(&fill, n);
	}
	fprintf(stderr, "xsk_tftp: %llu read requests, %llu ACKs, %llu blocks, %llu kicks\n",
		(unsigned long long)n_rrq, (unsigned long long)n_acks, (unsigned long long)n_blocks,
		(unsigned long long)n_kicks);
	xsk_socket__delete(xsk);
	xsk_umem__delete(umem);
	return 0;
}
