// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// XDP program of the TAS fast path: redirect the TCP segments the service owns to the
// AF_XDP socket of the receive queue they arrived on, and pass everything else to the
// kernel.
//
// A packet is redirected when all of these hold:
//   - Ethernet II frame with EtherType IPv4 (no VLAN tag),
//   - IPv4 version 4, IHL >= 5 (options are skipped, not parsed), not a fragment,
//   - protocol TCP with a complete 20-byte TCP header inside the frame,
//   - destination address == config[0].ip (network byte order, 0 = nothing owned),
//   - owned_ports[destination port in host order] != 0.
// Then bpf_redirect_map(&xsks, rx_queue_index, XDP_PASS): if no socket is registered for
// the queue the packet goes to the kernel (counted as STAT_NO_SOCKET).
// Everything else (ARP, ICMP, IPv6, other addresses and ports, fragments, malformed
// headers) gets XDP_PASS, so the kernel keeps the interface for SSH, ping and ARP.
//
// Self-contained on purpose: only the kernel UAPI headers (linux-libc-dev) are needed, not
// libbpf's bpf_helpers.h. Rebuild with ./build.sh (checks in redirect.bpf.o byte for byte).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

// Helpers are called through their ids (what bpf_helper_defs.h does).
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)BPF_FUNC_redirect_map;

// The byte order of the target (BPF on x86_64 is little endian).
#define bpf_htons(x) ((__u16)__builtin_bswap16((__u16)(x)))
#define bpf_ntohs(x) ((__u16)__builtin_bswap16((__u16)(x)))

// Keep in sync with fastpath/src/io/af_xdp (ServiceConfig / STAT_*).
struct service_config {
	__u32 ip;    // IPv4 address of the service, network byte order; 0 = redirect nothing
	__u32 flags; // reserved, 0
};

enum stat_index {
	STAT_REDIRECTED = 0, // sent to an AF_XDP socket
	STAT_PASSED = 1,     // not ours: given to the kernel
	STAT_NO_SOCKET = 2,  // ours, but no socket registered on the rx queue: given to the kernel
	STAT_COUNT = 3,
};

// Max rx queues served: XSKMAP index = rx queue id.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct service_config);
} config SEC(".maps");

// Index = TCP port in host byte order; value != 0 = owned by the service.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} owned_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __attribute__((always_inline)) int count(__u32 index, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &index);
	if (n)
		*n += 1; // per-CPU slot: no atomic needed
	return verdict;
}

// 0x3fff = the More Fragments flag and the 13-bit fragment offset.
#define IP_MF_AND_OFFSET 0x3fff

SEC("xdp")
int tas_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return count(STAT_PASSED, XDP_PASS);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return count(STAT_PASSED, XDP_PASS);

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return count(STAT_PASSED, XDP_PASS);
	if (ip->version != 4 || ip->ihl < 5)
		return count(STAT_PASSED, XDP_PASS);
	if (ip->protocol != IPPROTO_TCP)
		return count(STAT_PASSED, XDP_PASS);
	if (ip->frag_off & bpf_htons(IP_MF_AND_OFFSET))
		return count(STAT_PASSED, XDP_PASS);

	__u32 key = 0;
	struct service_config *cfg = bpf_map_lookup_elem(&config, &key);
	if (!cfg || cfg->ip == 0 || ip->daddr != cfg->ip)
		return count(STAT_PASSED, XDP_PASS);

	// ihl is 4 bits: the TCP header starts at most 60 bytes after the IP header.
	struct tcphdr *tcp = (void *)ip + ip->ihl * 4;
	if ((void *)(tcp + 1) > data_end)
		return count(STAT_PASSED, XDP_PASS);

	__u32 port = bpf_ntohs(tcp->dest);
	__u8 *owned = bpf_map_lookup_elem(&owned_ports, &port);
	if (!owned || *owned == 0)
		return count(STAT_PASSED, XDP_PASS);

	long verdict = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (verdict == XDP_REDIRECT)
		return count(STAT_REDIRECTED, XDP_REDIRECT);
	return count(STAT_NO_SOCKET, (int)verdict);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
