//! deploy/kubernetes agrees with the code. The Kubernetes bundle is
//! rendered as it would be applied (`kubectl kustomize` when kubectl is
//! installed, else every listed file parsed and the ConfigMap generators
//! rebuilt), and its shipped config read from the rendered ConfigMap, then
//! checked: ports, probe paths, grace against the drain, the chat app's
//! rules with an identity clients cannot choose, every path the proxy
//! writes on a writable volume, secrets from Secrets, and the Redis it
//! points to. The helpers here are shared by `deploy_monitoring.rs` (the
//! admin port, scraping, the dashboard and the alerts),
//! `deploy_shipped_run.rs` (the shipped config on the real binary) and
//! `deploy_docker_systemd.rs` (the Dockerfile and the systemd unit).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quota_proxy::app::SETTLE_FLUSH_MIN;
use quota_proxy::config::{Config, IdentityKind};
use serde_norway::Value;

/// What a stop budget (the pod's grace, the unit's `TimeoutStopSec`) keeps
/// beyond the drain's own steps, so the SIGKILL does not race the store
/// flush's deadline.
pub(crate) const STOP_SPARE: Duration = Duration::from_secs(5);

pub(crate) fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub(crate) fn deploy(path: &str) -> PathBuf {
    repo("deploy").join(path)
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document of `text`.
fn documents(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{what} is not YAML: {e}"))
        })
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

/// The bundle as `kubectl apply -k deploy/kubernetes` would send it.
pub(crate) fn bundle() -> Vec<Value> {
    let dir = deploy("kubernetes");
    if let Ok(output) = Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        assert!(
            output.status.success(),
            "kubectl kustomize deploy/kubernetes failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return documents(&String::from_utf8_lossy(&output.stdout), "kustomize output");
    }
    eprintln!("kubectl not found: parsing deploy/kubernetes file by file");
    let kustomization: Value =
        serde_norway::from_str(&read(&dir.join("kustomization.yaml"))).expect("kustomization");
    let mut all = Vec::new();
    for resource in seq(&kustomization["resources"], "resources") {
        let file = str_of(resource, "resource");
        all.extend(documents(&read(&dir.join(file)), file));
    }
    for generator in seq(&kustomization["configMapGenerator"], "configMapGenerator") {
        let mut data = serde_norway::Mapping::new();
        for file in seq(&generator["files"], "files") {
            let file = str_of(file, "file");
            let key = Path::new(file).file_name().expect("name").to_string_lossy();
            data.insert(key.as_ref().into(), read(&dir.join(file)).into());
        }
        let mut map = serde_norway::Mapping::new();
        map.insert("kind".into(), "ConfigMap".into());
        let mut metadata = serde_norway::Mapping::new();
        metadata.insert("name".into(), generator["name"].clone());
        if let Some(labels) = generator["options"].get("labels") {
            metadata.insert("labels".into(), labels.clone());
        }
        map.insert("metadata".into(), Value::Mapping(metadata));
        map.insert("data".into(), Value::Mapping(data));
        all.push(Value::Mapping(map));
    }
    all
}

/// The one document of `kind` whose name is `name` or, for generated
/// ConfigMaps, `name-<hash>`.
pub(crate) fn find<'a>(bundle: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = bundle
        .iter()
        .filter(|d| d["kind"] == kind)
        .filter(|d| {
            let n = d["metadata"]["name"].as_str().unwrap_or("");
            // A generated name: `name-` and a 10-character hash.
            n == name
                || n.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| {
                        hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_alphanumeric())
                    })
        })
        .collect();
    assert_eq!(found.len(), 1, "one {kind} named {name} expected");
    found[0]
}

pub(crate) fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

pub(crate) fn u64_of(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value:?}"))
}

pub(crate) fn seq<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what} is not a list: {value:?}"))
}

fn named<'a>(list: &'a Value, name: &str, what: &str) -> &'a Value {
    seq(list, what)
        .iter()
        .find(|item| item["name"] == name)
        .unwrap_or_else(|| panic!("no {what} named {name}"))
}

fn pod(bundle: &[Value]) -> &Value {
    &find(bundle, "Deployment", "chat-app")["spec"]["template"]["spec"]
}

pub(crate) fn proxy_container(bundle: &[Value]) -> &Value {
    named(&pod(bundle)["containers"], "quota-proxy", "container")
}

/// The config text the bundle ships (its generated ConfigMap).
pub(crate) fn shipped_text(bundle: &[Value]) -> String {
    let map = find(bundle, "ConfigMap", "quota-proxy-config");
    str_of(&map["data"]["quota-proxy.toml"], "quota-proxy.toml").to_owned()
}

/// The shipped config, parsed and validated (its secret files are not on
/// this machine: they are checked against the mounts instead).
fn shipped(bundle: &[Value]) -> Config {
    Config::from_toml(&shipped_text(bundle)).expect("the shipped config is valid")
}

/// The port a probe names, resolved through the container's named ports.
pub(crate) fn container_port(container: &Value, port: &Value) -> u64 {
    match port {
        Value::String(name) => u64_of(
            &named(&container["ports"], name, "container port")["containerPort"],
            "containerPort",
        ),
        port => u64_of(port, "port"),
    }
}

/// The mount holding `path` in `container`, and its volume.
fn mount_of<'a>(pod: &'a Value, container: &'a Value, path: &Path) -> (&'a Value, &'a Value) {
    let mount = seq(&container["volumeMounts"], "volumeMounts")
        .iter()
        .filter(|m| path.starts_with(str_of(&m["mountPath"], "mountPath")))
        .max_by_key(|m| str_of(&m["mountPath"], "mountPath").len())
        .unwrap_or_else(|| panic!("{} is on no mounted volume", path.display()));
    let volume = named(
        &pod["volumes"],
        str_of(&mount["name"], "mount name"),
        "volume",
    );
    (mount, volume)
}

#[test]
fn sidecar_ports_probes_and_grace_match_the_config() {
    let bundle = bundle();
    let config = shipped(&bundle);
    let pod = pod(&bundle);
    let proxy = proxy_container(&bundle);
    assert!(config.listen.ip().is_unspecified() && config.admin.listen.ip().is_unspecified());
    let port = |name: &str| container_port(proxy, &Value::String(name.to_owned()));
    assert_eq!(port("http"), u64::from(config.listen.port()));
    assert_eq!(port("admin"), u64::from(config.admin.listen.port()));

    let liveness = &proxy["livenessProbe"];
    let readiness = &proxy["readinessProbe"];
    assert_eq!(str_of(&liveness["httpGet"]["path"], "liveness"), "/healthz");
    assert_eq!(
        str_of(&readiness["httpGet"]["path"], "readiness"),
        "/readyz"
    );
    for probe in [liveness, readiness] {
        assert_eq!(
            container_port(proxy, &probe["httpGet"]["port"]),
            u64::from(config.admin.listen.port()),
            "probes go to the admin port, never the proxy's"
        );
    }

    // The pod may take preStop + the drain + the settlement waits past it +
    // the retry queue's flush, with seconds to spare (the kubelet's SIGKILL
    // must not race the flush's own deadline), and not much more.
    let pre_stop = Duration::from_secs(u64_of(
        &proxy["lifecycle"]["preStop"]["sleep"]["seconds"],
        "preStop sleep",
    ));
    // The drain's steps after the grace (src/app/mod.rs): the settlement
    // wait, then up to as long settling answers still streaming as cut,
    // then the store's flush.
    let needed =
        pre_stop + config.shutdown_grace.get() + 2 * SETTLE_FLUSH_MIN + config.store.flush_timeout;
    let grace = Duration::from_secs(u64_of(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    ));
    assert!(
        grace >= needed + STOP_SPARE && grace <= needed + Duration::from_secs(15),
        "terminationGracePeriodSeconds {grace:?} should cover preStop {pre_stop:?} + \
         shutdown_grace {:?} + 2 x {SETTLE_FLUSH_MIN:?} + flush_timeout {:?} = {needed:?}, \
         and {STOP_SPARE:?} to spare",
        config.shutdown_grace.get(),
        config.store.flush_timeout
    );

    for kind in ["requests", "limits"] {
        let resources = &proxy["resources"][kind];
        assert!(
            resources["memory"].is_string(),
            "resources.{kind}: {resources:?}"
        );
    }
    assert!(u64_of(&proxy["securityContext"]["runAsUser"], "runAsUser") != 0);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    // The Service sends clients to the proxy, never straight to Django,
    // and Django listens where the proxy forwards, on loopback only.
    let service = find(&bundle, "Service", "chat-app");
    let ports = seq(&service["spec"]["ports"], "service ports");
    assert_eq!(ports.len(), 1, "the public Service exposes one port");
    assert_eq!(str_of(&ports[0]["targetPort"], "targetPort"), "http");
    let django = named(&pod["containers"], "django", "container");
    let bind = format!("--bind={}", config.upstream.authority);
    assert!(
        seq(&django["args"], "django args")
            .iter()
            .any(|a| a == bind.as_str()),
        "django must bind {bind}"
    );
    assert_eq!(config.upstream.authority.host(), "127.0.0.1");
}

#[test]
fn shipped_config_is_the_chat_apps_preset_with_an_identity_clients_cannot_choose() {
    let bundle = bundle();
    let config = shipped(&bundle);
    assert_ne!(
        config.identity.kind,
        IdentityKind::Header,
        "behind a public Service, identity headers are the client's choice"
    );
    assert!(
        config.max_body_bytes.get() >= 5 * 10_000_000,
        "five 10 MB uploads fit"
    );
    assert!(
        config.usage.report_marker.is_some(),
        "streamed replies report in band"
    );

    // The rules are the preset's, field for field: every key but the ones
    // a deployment sets for itself (addresses, admin, logs, store, room).
    let preset: toml::Table =
        toml::from_str(&read(&repo("config/django-mobixai.toml"))).expect("preset");
    let shipped: toml::Table = toml::from_str(&shipped_text(&bundle)).expect("shipped");
    const DEPLOYMENT_KEYS: [&str; 9] = [
        "listen",
        "admin",
        "log",
        "store",
        "spool_dir",
        "body_budget_bytes",
        "max_connections",
        "shutdown_grace",
        "threads",
    ];
    let keys: std::collections::BTreeSet<&String> = preset.keys().chain(shipped.keys()).collect();
    for key in keys {
        if DEPLOYMENT_KEYS.contains(&key.as_str()) {
            continue;
        }
        assert_eq!(
            shipped.get(key),
            preset.get(key),
            "deploy/kubernetes/quota-proxy.toml's {key} differs from config/django-mobixai.toml's"
        );
    }
    assert_eq!(
        config.store.on_store_error,
        Config::from_toml(&read(&repo("config/django-mobixai.toml")))
            .expect("preset")
            .store
            .on_store_error
    );
}

#[test]
fn every_path_the_config_writes_is_a_writable_volume() {
    let bundle = bundle();
    let config = shipped(&bundle);
    let pod = pod(&bundle);
    let proxy = proxy_container(&bundle);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    // The spool is the only path the proxy writes; unset would mean the
    // system's temporary directory, on the read-only root.
    let spool = config
        .spool_dir
        .as_deref()
        .expect("spool_dir set: /tmp is read-only in the pod");
    let (mount, volume) = mount_of(pod, proxy, spool);
    assert_ne!(
        mount["readOnly"],
        true,
        "{} must be writable",
        spool.display()
    );
    assert!(
        volume["emptyDir"].is_mapping(),
        "spool_dir on an emptyDir: {volume:?}"
    );
    let size = str_of(&volume["emptyDir"]["sizeLimit"], "sizeLimit");
    assert!(
        bytes(size) >= config.max_body_bytes.get(),
        "the spool holds at least one largest upload: {size}"
    );
}

#[test]
fn config_and_secrets_are_mounted_from_a_config_map_and_secrets() {
    let bundle = bundle();
    let config = shipped(&bundle);
    let pod = pod(&bundle);
    let proxy = proxy_container(&bundle);
    let args: Vec<&str> = seq(&proxy["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    assert_eq!(args.last(), Some(&"serve"));
    let config_arg = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| Path::new(w[1]))
        .expect("--config in the sidecar's args");
    let (mount, volume) = mount_of(pod, proxy, config_arg);
    assert_eq!(mount["readOnly"], true);
    let map = find(&bundle, "ConfigMap", "quota-proxy-config");
    assert_eq!(volume["configMap"]["name"], map["metadata"]["name"]);
    let file = config_arg
        .strip_prefix(str_of(&mount["mountPath"], "mountPath"))
        .expect("under the mount");
    assert!(map["data"][file.to_str().expect("utf-8")].is_string());

    // Each secret file: a read-only mount of a Secret's key.
    let secret_of = |path: &Path| {
        let (mount, volume) = mount_of(pod, proxy, path);
        assert_eq!(mount["readOnly"], true, "{}", path.display());
        let file = path
            .strip_prefix(str_of(&mount["mountPath"], "mountPath"))
            .expect("under the mount");
        let item = seq(&volume["secret"]["items"], "secret items")
            .iter()
            .find(|i| i["path"] == file.to_str().expect("utf-8"))
            .unwrap_or_else(|| panic!("no Secret item at {}", path.display()));
        (
            str_of(&volume["secret"]["secretName"], "secretName").to_owned(),
            str_of(&item["key"], "key").to_owned(),
        )
    };
    secret_of(
        config
            .admin
            .token_file
            .as_deref()
            .expect("admin.token_file"),
    );
    let password = secret_of(
        config
            .store
            .password_file
            .as_deref()
            .expect("store.password_file"),
    );
    assert!(
        !config.store.url.contains('@'),
        "no password in the ConfigMap"
    );

    // Redis requires the same Secret's password.
    let redis = redis_container(&bundle);
    let env = named(&redis["env"], "REDIS_PASSWORD", "env");
    let from = &env["valueFrom"]["secretKeyRef"];
    assert_eq!(
        (str_of(&from["name"], "name"), str_of(&from["key"], "key")),
        (password.0.as_str(), password.1.as_str())
    );
    let redis_args = seq(&redis["args"], "args");
    assert!(
        redis_args
            .windows(2)
            .any(|w| w[0] == "--requirepass" && w[1] == "$(REDIS_PASSWORD)")
    );
}

fn redis_container(bundle: &[Value]) -> &Value {
    let set = find(bundle, "StatefulSet", "quota-redis");
    &seq(&set["spec"]["template"]["spec"]["containers"], "containers")[0]
}

/// Bytes of a Kubernetes quantity (`1Gi`, `256Mi`) or a Redis size
/// (`160mb`).
fn bytes(quantity: &str) -> u64 {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (n, unit) = quantity.split_at(split);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("{quantity}"));
    n * match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "ki" | "kb" => 1 << 10,
        "mi" | "mb" => 1 << 20,
        "gi" | "gb" => 1 << 30,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        other => panic!("unit {other} of {quantity}"),
    }
}

#[test]
fn redis_is_where_the_config_points_and_fit_for_production() {
    let bundle = bundle();
    let config = shipped(&bundle);
    let url = config
        .store
        .url
        .strip_prefix("redis://")
        .expect("redis URL");
    let (authority, _db) = url.split_once('/').expect("a database");
    let (host, port) = authority.split_once(':').expect("host:port");
    let port: u64 = port.parse().expect("port");
    let service = find(&bundle, "Service", host);
    let service_port = &seq(&service["spec"]["ports"], "ports")[0];
    assert_eq!(u64_of(&service_port["port"], "port"), port);
    let redis = redis_container(&bundle);
    assert_eq!(container_port(redis, &service_port["targetPort"]), port);

    let args: Vec<&str> = seq(&redis["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let arg = |name: &str| {
        args.windows(2)
            .find(|w| w[0] == name)
            .map(|w| w[1])
            .unwrap_or_else(|| panic!("redis-server {name} missing"))
    };
    assert_eq!(
        arg("--maxmemory-policy"),
        "noeviction",
        "counters are never evicted"
    );
    assert_eq!(arg("--appendonly"), "yes", "counts survive a restart");
    let limit = bytes(str_of(
        &redis["resources"]["limits"]["memory"],
        "memory limit",
    ));
    let maxmemory = bytes(arg("--maxmemory"));
    assert!(
        maxmemory * 4 <= limit * 3,
        "maxmemory {maxmemory} leaves room under the limit {limit} for the AOF rewrite's fork"
    );
    // A version, never a moving tag.
    let image = str_of(&redis["image"], "image");
    let tag = image
        .split('@')
        .next()
        .and_then(|i| i.rsplit_once(':'))
        .map(|(_, t)| t)
        .expect("a tag");
    assert!(
        image.contains("@sha256:") || tag.matches('.').count() == 2,
        "pin redis to a full version (and its digest at deploy): {image}"
    );
}
