//! Kubernetes Services as kube-proxy's nftables mode writes them, for the
//! tests of berth's bridges under Services (tests/node_agent.rs on two
//! namespaces, tests/cluster.rs on nodes of the cluster harness).

/// The nat part of the `ip kube-proxy` table kube-proxy's nftables mode
/// writes for ClusterIP Services (kubernetes' pkg/proxy/nftables/proxier.go:
/// `setupNFTables` and `syncProxyRules`, with its `--cluster-cidr` local
/// traffic detector): the base chains at dstnat and srcnat, the
/// `service-ips` verdict map, a service chain that marks traffic from
/// outside the cluster CIDR for masquerade and picks an endpoint with
/// `numgen random mod N`, endpoint chains that mark hairpin traffic (from
/// the endpoint itself) and DNAT, and the masquerade of marked traffic
/// (mark 0x4000). Chain names follow kube-proxy's shapes. (nat-output's
/// priority is written as -100, dstnat's value: Debian 12's nft 1.0.6
/// takes the name only on prerouting.)
///
/// `services`: each Service's ClusterIP (TCP port 80) and its endpoints'
/// pod addresses (port 8080).
pub fn kube_proxy_table(cluster_cidr: &str, services: &[(&str, &[&str])]) -> String {
    let mut elements = Vec::new();
    let mut chains = String::new();
    for (i, (vip, endpoints)) in services.iter().enumerate() {
        let svc = format!("service-T{i}ESTSVC-ns/svc{i}/tcp/p80");
        elements.push(format!("{vip} . tcp . 80 : goto {svc}"));
        let mut vmap = Vec::new();
        for (j, ep) in endpoints.iter().enumerate() {
            let chain = format!("endpoint-T{i}EP{j}-ns/svc{i}/tcp/p80__{ep}/8080");
            vmap.push(format!("{j} : goto {chain}"));
            chains.push_str(&format!(
                "  chain {chain} {{\n    ip saddr {ep} jump mark-for-masquerade\n    meta l4proto tcp dnat to {ep}:8080\n  }}\n"
            ));
        }
        chains.push_str(&format!(
            "  chain {svc} {{\n    ip daddr {vip} tcp dport 80 ip saddr != {cluster_cidr} jump mark-for-masquerade\n    numgen random mod {} vmap {{ {} }}\n  }}\n",
            endpoints.len(),
            vmap.join(", ")
        ));
    }
    format!(
        "table ip kube-proxy {{\n  comment \"rules for kube-proxy\"\n\
         {chains}\
           chain mark-for-masquerade {{\n    mark set mark or 0x4000\n  }}\n\
           chain masquerading {{\n    mark and 0x4000 == 0 return\n    mark set mark xor 0x4000\n    masquerade fully-random\n  }}\n\
           map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}\n\
           chain services {{\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }}\n\
           chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }}\n\
           chain nat-output {{\n    type nat hook output priority -100; policy accept;\n    jump services\n  }}\n\
           chain nat-postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    jump masquerading\n  }}\n\
         }}\n",
        elements.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_chain_per_service_and_endpoint() {
        let t = kube_proxy_table(
            "10.244.0.0/16",
            &[("10.96.0.10", &["10.244.1.2", "10.244.2.2"])],
        );
        assert!(t.contains("10.96.0.10 . tcp . 80 : goto service-T0ESTSVC-ns/svc0/tcp/p80"));
        assert!(t.contains("numgen random mod 2 vmap { 0 : goto endpoint-T0EP0"));
        assert!(t.contains("dnat to 10.244.2.2:8080"));
        assert!(t.contains("ip saddr != 10.244.0.0/16 jump mark-for-masquerade"));
    }
}
