// SPDX-License-Identifier: GPL-2.0
/*
 * tc eBPF stand-in for a VLAN sub-interface (eth1.500) where the kernel has
 * neither the 8021q module nor tc's act_vlan, but has cls_bpf.
 *
 * Attached to both ends of a trunk (clsact qdisc), it makes the interface
 * behave as the VLAN's side of the trunk:
 *   egress  (vlan_push): every frame leaves tagged 802.1Q VLAN_ID;
 *                        a frame that already carries a tag is dropped;
 *   ingress (vlan_pop):  only frames tagged 802.1Q VLAN_ID are accepted, and
 *                        untagged before the stack (or a macvlan on top) sees
 *                        them; untagged frames and other tags are dropped.
 *
 * Build (Debian: clang, libbpf-dev):
 *   clang -O2 -target bpf -I/usr/include/$(uname -m)-linux-gnu \
 *         [-DVLAN_ID=500] -c vlan500.bpf.c -o vlan500.bpf.o
 * Load:
 *   tc qdisc add dev IFACE clsact
 *   tc filter add dev IFACE egress  bpf da obj vlan500.bpf.o sec tc/egress
 *   tc filter add dev IFACE ingress bpf da obj vlan500.bpf.o sec tc/ingress
 * (moving IFACE to another network namespace drops the qdisc: load after.)
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef VLAN_ID
#define VLAN_ID 500
#endif

SEC("tc/egress")
int vlan_push(struct __sk_buff *skb)
{
	if (skb->vlan_present)
		return TC_ACT_SHOT;
	if (bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), VLAN_ID))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

SEC("tc/ingress")
int vlan_pop(struct __sk_buff *skb)
{
	if (!skb->vlan_present || (skb->vlan_tci & 0x0fff) != VLAN_ID ||
	    skb->vlan_proto != bpf_htons(ETH_P_8021Q))
		return TC_ACT_SHOT;
	if (bpf_skb_vlan_pop(skb))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
