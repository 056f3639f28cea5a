"""Flag names the Kubernetes components accept, per minor version, for the stand-in ``rke2``.

RKE2 passes ``kube-apiserver-arg``, ``kubelet-arg``, ... items to the components as ``--name=value``
(k3s ``pkg/util/args.go`` ``GetArgs``); an unknown name makes the real component exit with
``Error: unknown flag: --name``. The stand-in checks every such item against this table
(``rke2_script`` embeds it as JSON), so a typo in a baked config fails here as it would on a node.

Sources (flag names copied from the option tables, not from memory):

- kube-apiserver, kube-controller-manager, kube-proxy: kubernetes/website
  ``content/en/docs/reference/command-line-tools-reference/{kube-apiserver,kube-controller-manager,
  kube-proxy}.md`` as regenerated from the v1.31 binaries by kubernetes/website PR #47531 ("Update
  reference for kube components v1.31", merged 2024-08-17; replaced for v1.32 by PR #49039). The
  versions used are the ones whose ``--emulated-version`` help reads ``kube=1.31..1.31
  (default=1.31)`` and whose feature-gate list carries the 1.31-only ``DRAControlPlaneController``
  gate. The commit hash of that generation could not be looked up here (the website repository
  is too large to mirror); the PR is the reference.
- kube-scheduler: the English v1.31 generation was not available; the names come from the
  zh-cn translation of it (``content/zh-cn/.../kube-scheduler.md``, same ``kube=1.31..1.31``
  marker; the option rows are copied untranslated). Translators keep old rows: ``logtostderr`` and
  ``pod-max-in-unschedulable-pods-duration`` are listed there and kept here, so the stand-in may
  accept those two where a v1.31 scheduler would not.
- kubelet: its reference page is maintained by hand, so the names come from the source instead:
  kubernetes/kubernetes ``cmd/kubelet/app/options/options.go`` at commit
  6785e9ed401a526cfb4ae33d498b088e27237ad1 (``KubeletFlags.AddFlags`` and
  ``AddKubeletConfigFlags``, including ``logsapi.AddFlags``: logging-format, log-flush-frequency,
  v, vmodule, log-text-*, log-json-*), ``pkg/kubelet/config/flags.go`` (``ContainerRuntimeOptions``:
  runtime-cgroups, pod-infra-container-image, image-credential-provider-*) and verflag/cobra
  (version, help). That commit is the stored version nearest to v1.31 that could be read; it was not
  checked against the v1.31.4 tag.
- ``log-json-info-buffer-size`` and ``log-json-split-stream`` are added to the four components
  whose pages list only the text format: their ``main`` packages import
  ``k8s.io/component-base/logs/json/register`` (seen for ``cmd/kube-apiserver/apiserver.go``),
  which the docs generator does not.

Lookups normalise ``_`` to ``-`` as the components do (``k8s.io/component-base/cli/run.go`` sets
``cliflag.WordSepNormalizeFunc``), so ``log_dir`` and ``log-dir`` are the same flag for kube-proxy.
Flags the binaries hide from ``--help`` (deprecated and hidden) are not listed: the stand-in rejects
them, which is stricter than upstream (which warns and accepts them).

Not validated (listed in ``NOT_VALIDATED``): ``etcd-arg`` - RKE2 does not put these on etcd's
command line but into its ``--config-file`` YAML (k3s ``pkg/daemons/executor`` ``ToConfigFile``), so
an unknown key is not an "unknown flag" error; what etcd v3.5 does with it was not sourced here.
``kube-cloud-controller-manager-arg`` - RKE2's cloud controller is its own image
(rke2-cloud-provider); no reference table for it was found.

Add a Kubernetes minor by adding a key to ``FLAGS``; the stand-in refuses to check ``*-arg`` items
for a minor that is not in the table (an explicit failure, not a silent pass).
"""

from __future__ import annotations

import json

# rke2 config key -> Kubernetes component it feeds (k3s pkg/cli/cmds: ExtraAPIArgs, ...)
CONFIG_KEYS: dict[str, str] = {
    "kube-apiserver-arg": "kube-apiserver",
    "kube-controller-manager-arg": "kube-controller-manager",
    "kube-scheduler-arg": "kube-scheduler",
    "kubelet-arg": "kubelet",
    "kube-proxy-arg": "kube-proxy",
}

# keys that only servers read (agents skip them: k3s configfilearg strips flags the command lacks)
SERVER_ONLY_KEYS = frozenset({"kube-apiserver-arg", "kube-controller-manager-arg", "kube-scheduler-arg"})

NOT_VALIDATED: dict[str, str] = {
    "etcd-arg": "written into etcd's config file, not its command line (k3s ToConfigFile)",
    "kube-cloud-controller-manager-arg": "rke2-cloud-provider has no sourced flag table",
}

_JSON_LOGGING = frozenset({"log-json-info-buffer-size", "log-json-split-stream"})


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


FLAGS: dict[str, dict[str, frozenset[str]]] = {
    "1.31": {
        "kube-apiserver": _names("""
            admission-control-config-file advertise-address aggregator-reject-forwarding-redirect
            allow-metric-labels allow-metric-labels-manifest allow-privileged anonymous-auth api-audiences
            audit-log-batch-buffer-size audit-log-batch-max-size audit-log-batch-max-wait
            audit-log-batch-throttle-burst audit-log-batch-throttle-enable audit-log-batch-throttle-qps
            audit-log-compress audit-log-format audit-log-maxage audit-log-maxbackup audit-log-maxsize
            audit-log-mode audit-log-path audit-log-truncate-enabled audit-log-truncate-max-batch-size
            audit-log-truncate-max-event-size audit-log-version audit-policy-file
            audit-webhook-batch-buffer-size audit-webhook-batch-max-size audit-webhook-batch-max-wait
            audit-webhook-batch-throttle-burst audit-webhook-batch-throttle-enable
            audit-webhook-batch-throttle-qps audit-webhook-config-file audit-webhook-initial-backoff
            audit-webhook-mode audit-webhook-truncate-enabled audit-webhook-truncate-max-batch-size
            audit-webhook-truncate-max-event-size audit-webhook-version authentication-config
            authentication-token-webhook-cache-ttl authentication-token-webhook-config-file
            authentication-token-webhook-version authorization-config authorization-mode
            authorization-policy-file authorization-webhook-cache-authorized-ttl
            authorization-webhook-cache-unauthorized-ttl authorization-webhook-config-file
            authorization-webhook-version bind-address cert-dir client-ca-file contention-profiling
            cors-allowed-origins debug-socket-path default-not-ready-toleration-seconds
            default-unreachable-toleration-seconds delete-collection-workers disable-admission-plugins
            disable-http2-serving disabled-metrics egress-selector-config-file emulated-version
            enable-admission-plugins enable-aggregator-routing enable-bootstrap-token-auth
            enable-garbage-collector enable-priority-and-fairness encryption-provider-config
            encryption-provider-config-automatic-reload endpoint-reconciler-type etcd-cafile etcd-certfile
            etcd-compaction-interval etcd-count-metric-poll-period etcd-db-metric-poll-interval
            etcd-healthcheck-timeout etcd-keyfile etcd-prefix etcd-readycheck-timeout etcd-servers
            etcd-servers-overrides event-ttl external-hostname feature-gates goaway-chance help
            http2-max-streams-per-connection kubelet-certificate-authority kubelet-client-certificate
            kubelet-client-key kubelet-preferred-address-types kubelet-timeout kubernetes-service-node-port
            lease-reuse-duration-seconds livez-grace-period log-flush-frequency log-text-info-buffer-size
            log-text-split-stream logging-format max-connection-bytes-per-sec max-mutating-requests-inflight
            max-requests-inflight min-request-timeout oidc-ca-file oidc-client-id oidc-groups-claim
            oidc-groups-prefix oidc-issuer-url oidc-required-claim oidc-signing-algs oidc-username-claim
            oidc-username-prefix peer-advertise-ip peer-advertise-port peer-ca-file permit-address-sharing
            permit-port-sharing profiling proxy-client-cert-file proxy-client-key-file request-timeout
            requestheader-allowed-names requestheader-client-ca-file requestheader-extra-headers-prefix
            requestheader-group-headers requestheader-username-headers runtime-config secure-port
            service-account-extend-token-expiration service-account-issuer service-account-jwks-uri
            service-account-key-file service-account-lookup service-account-max-token-expiration
            service-account-signing-key-file service-cluster-ip-range service-node-port-range
            show-hidden-metrics-for-version shutdown-delay-duration shutdown-send-retry-after
            shutdown-watch-termination-grace-period storage-backend storage-initialization-timeout
            storage-media-type strict-transport-security-directives tls-cert-file tls-cipher-suites
            tls-min-version tls-private-key-file tls-sni-cert-key token-auth-file tracing-config-file v
            version vmodule watch-cache watch-cache-sizes
        """),
        "kube-controller-manager": _names("""
            allocate-node-cidrs allow-metric-labels allow-metric-labels-manifest
            attach-detach-reconcile-sync-period authentication-kubeconfig authentication-skip-lookup
            authentication-token-webhook-cache-ttl authentication-tolerate-lookup-failure
            authorization-always-allow-paths authorization-kubeconfig
            authorization-webhook-cache-authorized-ttl authorization-webhook-cache-unauthorized-ttl
            bind-address cert-dir cidr-allocator-type client-ca-file cloud-config cloud-provider
            cluster-cidr cluster-name cluster-signing-cert-file cluster-signing-duration
            cluster-signing-key-file cluster-signing-kube-apiserver-client-cert-file
            cluster-signing-kube-apiserver-client-key-file cluster-signing-kubelet-client-cert-file
            cluster-signing-kubelet-client-key-file cluster-signing-kubelet-serving-cert-file
            cluster-signing-kubelet-serving-key-file cluster-signing-legacy-unknown-cert-file
            cluster-signing-legacy-unknown-key-file concurrent-cron-job-syncs concurrent-deployment-syncs
            concurrent-endpoint-syncs concurrent-ephemeralvolume-syncs concurrent-gc-syncs
            concurrent-horizontal-pod-autoscaler-syncs concurrent-job-syncs concurrent-namespace-syncs
            concurrent-rc-syncs concurrent-replicaset-syncs concurrent-resource-quota-syncs
            concurrent-service-endpoint-syncs concurrent-service-syncs concurrent-serviceaccount-token-syncs
            concurrent-statefulset-syncs concurrent-ttl-after-finished-syncs
            concurrent-validating-admission-policy-status-syncs configure-cloud-routes contention-profiling
            controller-start-interval controllers disable-attach-detach-reconcile-sync
            disable-force-detach-on-timeout disable-http2-serving disabled-metrics emulated-version
            enable-dynamic-provisioning enable-garbage-collector enable-hostpath-provisioner
            enable-leader-migration endpoint-updates-batch-period endpointslice-updates-batch-period
            external-cloud-volume-plugin feature-gates flex-volume-plugin-dir help
            horizontal-pod-autoscaler-cpu-initialization-period
            horizontal-pod-autoscaler-downscale-stabilization
            horizontal-pod-autoscaler-initial-readiness-delay horizontal-pod-autoscaler-sync-period
            horizontal-pod-autoscaler-tolerance http2-max-streams-per-connection kube-api-burst
            kube-api-content-type kube-api-qps kubeconfig large-cluster-size-threshold leader-elect
            leader-elect-lease-duration leader-elect-renew-deadline leader-elect-resource-lock
            leader-elect-resource-name leader-elect-resource-namespace leader-elect-retry-period
            leader-migration-config legacy-service-account-token-clean-up-period log-flush-frequency
            log-text-info-buffer-size log-text-split-stream logging-format master max-endpoints-per-slice
            min-resync-period mirroring-concurrent-service-endpoint-syncs
            mirroring-endpointslice-updates-batch-period mirroring-max-endpoints-per-subset
            namespace-sync-period node-cidr-mask-size node-cidr-mask-size-ipv4 node-cidr-mask-size-ipv6
            node-eviction-rate node-monitor-grace-period node-monitor-period node-startup-grace-period
            permit-address-sharing permit-port-sharing profiling pv-recycler-increment-timeout-nfs
            pv-recycler-minimum-timeout-hostpath pv-recycler-minimum-timeout-nfs
            pv-recycler-pod-template-filepath-hostpath pv-recycler-pod-template-filepath-nfs
            pv-recycler-timeout-increment-hostpath pvclaimbinder-sync-period requestheader-allowed-names
            requestheader-client-ca-file requestheader-extra-headers-prefix requestheader-group-headers
            requestheader-username-headers resource-quota-sync-period root-ca-file
            route-reconciliation-period secondary-node-eviction-rate secure-port
            service-account-private-key-file service-cluster-ip-range show-hidden-metrics-for-version
            terminated-pod-gc-threshold tls-cert-file tls-cipher-suites tls-min-version tls-private-key-file
            tls-sni-cert-key unhealthy-zone-threshold use-service-account-credentials v version vmodule
        """),
        "kube-scheduler": _names("""
            allow-metric-labels allow-metric-labels-manifest authentication-kubeconfig
            authentication-skip-lookup authentication-token-webhook-cache-ttl
            authentication-tolerate-lookup-failure authorization-always-allow-paths authorization-kubeconfig
            authorization-webhook-cache-authorized-ttl authorization-webhook-cache-unauthorized-ttl
            bind-address cert-dir client-ca-file config contention-profiling disable-http2-serving
            disabled-metrics emulated-version feature-gates help http2-max-streams-per-connection
            kube-api-burst kube-api-content-type kube-api-qps kubeconfig leader-elect
            leader-elect-lease-duration leader-elect-renew-deadline leader-elect-resource-lock
            leader-elect-resource-name leader-elect-resource-namespace leader-elect-retry-period
            log-flush-frequency log-text-info-buffer-size log-text-split-stream logging-format logtostderr
            master permit-address-sharing permit-port-sharing pod-max-in-unschedulable-pods-duration
            profiling requestheader-allowed-names requestheader-client-ca-file
            requestheader-extra-headers-prefix requestheader-group-headers requestheader-username-headers
            secure-port show-hidden-metrics-for-version tls-cert-file tls-cipher-suites tls-min-version
            tls-private-key-file tls-sni-cert-key v version vmodule write-config-to
        """),
        "kube-proxy": _names("""
            add_dir_header alsologtostderr bind-address bind-address-hard-fail cleanup cluster-cidr config
            config-sync-period conntrack-max-per-core conntrack-min conntrack-tcp-be-liberal
            conntrack-tcp-timeout-close-wait conntrack-tcp-timeout-established conntrack-udp-timeout
            conntrack-udp-timeout-stream detect-local-mode feature-gates healthz-bind-address help
            hostname-override init-only iptables-localhost-nodeports iptables-masquerade-bit
            iptables-min-sync-period iptables-sync-period ipvs-exclude-cidrs ipvs-min-sync-period
            ipvs-scheduler ipvs-strict-arp ipvs-sync-period ipvs-tcp-timeout ipvs-tcpfin-timeout
            ipvs-udp-timeout kube-api-burst kube-api-content-type kube-api-qps kubeconfig
            log-flush-frequency log-text-info-buffer-size log-text-split-stream log_backtrace_at log_dir
            log_file log_file_max_size logging-format logtostderr masquerade-all master metrics-bind-address
            nodeport-addresses one_output oom-score-adj pod-bridge-interface pod-interface-name-prefix
            profiling proxy-mode show-hidden-metrics-for-version skip_headers skip_log_headers
            stderrthreshold v version vmodule write-config-to
        """),
        "kubelet": _names("""
            address allowed-unsafe-sysctls anonymous-auth authentication-token-webhook
            authentication-token-webhook-cache-ttl authorization-mode
            authorization-webhook-cache-authorized-ttl authorization-webhook-cache-unauthorized-ttl
            bootstrap-kubeconfig cert-dir cgroup-driver cgroup-root cgroups-per-qos client-ca-file
            cloud-config cloud-provider cluster-dns cluster-domain config config-dir container-log-max-files
            container-log-max-size container-runtime-endpoint contention-profiling cpu-cfs-quota
            cpu-cfs-quota-period cpu-manager-policy cpu-manager-policy-options cpu-manager-reconcile-period
            enable-controller-attach-detach enable-debugging-handlers enable-server enforce-node-allocatable
            event-burst event-qps eviction-hard eviction-max-pod-grace-period eviction-minimum-reclaim
            eviction-pressure-transition-period eviction-soft eviction-soft-grace-period
            exit-on-lock-contention experimental-allocatable-ignore-eviction experimental-mounter-path
            fail-swap-on feature-gates file-check-frequency hairpin-mode healthz-bind-address healthz-port
            help hostname-override http-check-frequency image-credential-provider-bin-dir
            image-credential-provider-config image-gc-high-threshold image-gc-low-threshold
            image-service-endpoint iptables-drop-bit iptables-masquerade-bit keep-terminated-pod-volumes
            kernel-memcg-notification kube-api-burst kube-api-content-type kube-api-qps kube-reserved
            kube-reserved-cgroup kubeconfig kubelet-cgroups local-storage-capacity-isolation lock-file
            log-flush-frequency log-json-info-buffer-size log-json-split-stream log-text-info-buffer-size
            log-text-split-stream logging-format make-iptables-util-chains manifest-url manifest-url-header
            max-open-files max-pods maximum-dead-containers maximum-dead-containers-per-container
            memory-manager-policy minimum-container-ttl-duration minimum-image-ttl-duration node-ip
            node-labels node-status-max-images node-status-update-frequency oom-score-adj pod-cidr
            pod-infra-container-image pod-manifest-path pod-max-pids pods-per-core port
            protect-kernel-defaults provider-id qos-reserved read-only-port register-node
            register-schedulable register-with-taints registry-burst registry-qps reserved-cpus
            reserved-memory resolv-conf root-dir rotate-certificates rotate-server-certificates runonce
            runtime-cgroups runtime-request-timeout seccomp-default serialize-image-pulls
            streaming-connection-idle-timeout sync-frequency system-cgroups system-reserved
            system-reserved-cgroup tls-cert-file tls-cipher-suites tls-min-version tls-private-key-file
            topology-manager-policy topology-manager-policy-options topology-manager-scope v version vmodule
            volume-plugin-dir volume-stats-agg-period
        """),
    },
}
for _component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"):
    FLAGS["1.31"][_component] = FLAGS["1.31"][_component] | _JSON_LOGGING


def normalize(name: str) -> str:
    """The name pflag looks up (``cliflag.WordSepNormalizeFunc``: ``_`` becomes ``-``)."""
    return name.replace("_", "-")


def minor_of(rke2_version: str) -> str:
    """``v1.31.4+rke2r1`` -> ``1.31``."""
    major, minor = rke2_version.lstrip("v").split(".")[:2]
    return f"{major}.{minor}"


def known(minor: str, component: str, name: str) -> bool:
    """Whether ``--name`` is a flag of ``component`` in Kubernetes ``minor`` (KeyError: no table)."""
    return normalize(name) in {normalize(n) for n in FLAGS[minor][component]}


def table_json() -> str:
    """The table as JSON for the stand-in script: {minor: {component: [names]}}."""
    return json.dumps({m: {c: sorted(n) for c, n in comps.items()} for m, comps in FLAGS.items()},
                      sort_keys=True, separators=(",", ":"))
