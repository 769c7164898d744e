//! deploy/ agrees with the code: the Kubernetes manifests, the Dockerfile
//! and the systemd unit use the ports, probe paths and grace period of the
//! config defaults (read from `Config::default()`, never restated here),
//! and the sidecar's config (the ConfigMap's file) loads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use quota_proxy::app::SETTLE_FLUSH_MIN;
use quota_proxy::config::Config;
use serde_norway::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// Every YAML document of a manifest file.
fn documents(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("deploy/{path} is not YAML: {e}"))
        })
        .collect()
}

/// The one document of `kind` in a manifest file.
fn manifest(path: &str, kind: &str) -> Value {
    let mut found: Vec<Value> = documents(path)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "deploy/{path}: one {kind} expected");
    found.remove(0)
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn u64_of(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value:?}"))
}

fn seq<'a>(value: &'a Value, what: &str) -> &'a [Value] {
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

/// The port a probe names, resolved through the container's named ports.
fn probe_port(container: &Value, probe: &Value) -> u64 {
    match &probe["httpGet"]["port"] {
        Value::String(name) => u64_of(
            &named(&container["ports"], name, "container port")["containerPort"],
            "containerPort",
        ),
        port => u64_of(port, "probe port"),
    }
}

/// The sidecar's config, as the ConfigMap generator ships it.
fn sidecar_config() -> Config {
    Config::load(&deploy("kubernetes/quota-proxy.toml")).expect("the sidecar config loads")
}

#[test]
fn sidecar_ports_probes_and_grace_match_the_config() {
    let defaults = Config::default();
    let config = sidecar_config();
    // The sidecar only changes the host (to the pod's interfaces).
    assert_eq!(config.listen.port(), defaults.listen.port());
    assert_eq!(config.admin.listen.port(), defaults.admin.listen.port());
    assert_eq!(config.shutdown_grace, defaults.shutdown_grace);
    assert!(config.listen.ip().is_unspecified() && config.admin.listen.ip().is_unspecified());

    let deployment = manifest("kubernetes/deployment.yaml", "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let proxy = named(&pod["containers"], "quota-proxy", "container");
    let port = |name: &str| {
        u64_of(
            &named(&proxy["ports"], name, "port")["containerPort"],
            "containerPort",
        )
    };
    assert_eq!(port("http"), u64::from(defaults.listen.port()));
    assert_eq!(port("admin"), u64::from(defaults.admin.listen.port()));

    let liveness = &proxy["livenessProbe"];
    let readiness = &proxy["readinessProbe"];
    assert_eq!(
        str_of(&liveness["httpGet"]["path"], "liveness path"),
        "/healthz"
    );
    assert_eq!(
        str_of(&readiness["httpGet"]["path"], "readiness path"),
        "/readyz"
    );
    for probe in [liveness, readiness] {
        assert_eq!(
            probe_port(proxy, probe),
            u64::from(defaults.admin.listen.port()),
            "probes go to the admin port, never the proxy's"
        );
    }

    // The pod may take preStop + the drain + the settlement flush, and not
    // much more.
    let pre_stop = Duration::from_secs(u64_of(
        &proxy["lifecycle"]["preStop"]["sleep"]["seconds"],
        "preStop sleep",
    ));
    let needed = pre_stop + defaults.shutdown_grace + SETTLE_FLUSH_MIN;
    let grace = Duration::from_secs(u64_of(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    ));
    assert!(
        grace >= needed && grace <= needed + Duration::from_secs(15),
        "terminationGracePeriodSeconds {grace:?} should cover preStop {pre_stop:?} + \
         shutdown_grace {:?} + flush {SETTLE_FLUSH_MIN:?} = {needed:?}",
        defaults.shutdown_grace
    );

    for kind in ["requests", "limits"] {
        let resources = &proxy["resources"][kind];
        assert!(
            resources["memory"].is_string() && resources["cpu"].as_str().is_some(),
            "quota-proxy resources.{kind}: {resources:?}"
        );
    }
    assert!(u64_of(&proxy["securityContext"]["runAsUser"], "runAsUser") != 0);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);

    // The Service sends clients to the proxy, never straight to Django.
    let service = manifest("kubernetes/service.yaml", "Service");
    let target = str_of(
        &seq(&service["spec"]["ports"], "service ports")[0]["targetPort"],
        "targetPort",
    );
    assert_eq!(target, "http");
    // Django listens where the proxy forwards, on loopback only.
    let django = named(&pod["containers"], "django", "container");
    let bind = format!("--bind={}", config.upstream.authority);
    assert!(
        seq(&django["args"], "django args")
            .iter()
            .any(|a| a == bind.as_str()),
        "django must bind {bind}"
    );
    assert!(config.upstream.authority.host() == "127.0.0.1");
}

#[test]
fn config_and_token_are_mounted_from_a_config_map_and_a_secret() {
    let config = sidecar_config();
    let deployment = manifest("kubernetes/deployment.yaml", "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let proxy = named(&pod["containers"], "quota-proxy", "container");
    let args: Vec<&str> = seq(&proxy["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let config_arg = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| Path::new(w[1]))
        .expect("--config in the sidecar's args");
    assert_eq!(args.last(), Some(&"serve"));

    let mount_of = |volume: &str| {
        let mount = named(&proxy["volumeMounts"], volume, "volume mount");
        assert_eq!(mount["readOnly"], true, "{volume} is mounted read-only");
        PathBuf::from(str_of(&mount["mountPath"], "mountPath"))
    };

    // The config: a ConfigMap generated from deploy/kubernetes/quota-proxy.toml.
    let kustomization: Value =
        serde_norway::from_str(&read("kubernetes/kustomization.yaml")).expect("kustomization.yaml");
    let generator = &seq(&kustomization["configMapGenerator"], "configMapGenerator")[0];
    let map_name = str_of(&generator["name"], "generator name");
    let file = str_of(&seq(&generator["files"], "files")[0], "file");
    assert!(deploy("kubernetes").join(file).is_file());
    let volume = named(&pod["volumes"], map_name, "volume");
    assert_eq!(
        str_of(&volume["configMap"]["name"], "configMap name"),
        map_name
    );
    assert_eq!(mount_of(map_name).join(file), config_arg);
    for resource in seq(&kustomization["resources"], "resources") {
        let resource = str_of(resource, "resource");
        assert!(deploy("kubernetes").join(resource).is_file(), "{resource}");
    }

    // The token: a Secret mounted where admin.token_file points.
    let token_file = config.admin.token_file.as_ref().expect("admin.token_file");
    let secret = named(&pod["volumes"], "quota-proxy-admin", "volume");
    let item = &seq(&secret["secret"]["items"], "secret items")[0];
    assert_eq!(
        mount_of("quota-proxy-admin").join(str_of(&item["path"], "item path")),
        *token_file
    );
}

#[test]
fn redis_is_where_the_config_points() {
    let config = sidecar_config();
    let url = config
        .store
        .url
        .strip_prefix("redis://")
        .expect("redis URL");
    let (authority, _db) = url.split_once('/').expect("a database");
    let (host, port) = authority.split_once(':').expect("host:port");
    let port: u64 = port.parse().expect("port");

    let service = manifest("kubernetes/redis.yaml", "Service");
    assert_eq!(str_of(&service["metadata"]["name"], "service name"), host);
    let service_port = &seq(&service["spec"]["ports"], "ports")[0];
    assert_eq!(u64_of(&service_port["port"], "port"), port);
    let set = manifest("kubernetes/redis.yaml", "StatefulSet");
    let redis = &seq(&set["spec"]["template"]["spec"]["containers"], "containers")[0];
    let target = str_of(&service_port["targetPort"], "targetPort");
    assert_eq!(
        u64_of(
            &named(&redis["ports"], target, "port")["containerPort"],
            "containerPort"
        ),
        port
    );
    let args: Vec<&str> = seq(&redis["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--maxmemory-policy", "noeviction"]),
        "counters must never be evicted"
    );
}

#[test]
fn dockerfile_builds_in_stages_and_runs_unprivileged() {
    let defaults = Config::default();
    let text = read("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let stages = lines.iter().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "a multi-stage build");
    let last_stage = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("FROM");
    let runtime = &lines[last_stage..];
    let value = |instruction: &str| {
        runtime
            .iter()
            .find_map(|l| l.strip_prefix(instruction))
            .unwrap_or_else(|| panic!("the runtime stage has no {instruction}"))
            .trim()
    };
    let user = value("USER ");
    assert!(
        !matches!(user.split(':').next(), Some("root" | "0")),
        "USER {user}"
    );
    let exposed: Vec<u16> = value("EXPOSE ")
        .split_whitespace()
        .map(|p| p.parse().expect("port"))
        .collect();
    assert!(exposed.contains(&defaults.listen.port()));
    assert!(exposed.contains(&defaults.admin.listen.port()));
    assert_eq!(value("STOPSIGNAL "), "SIGTERM");
    assert!(value("ENTRYPOINT ").contains("quota-proxy"));
}

#[test]
fn systemd_unit_reloads_with_sighup_and_waits_for_the_drain() {
    let defaults = Config::default();
    let text = read("systemd/quota-proxy.service");
    let setting = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
    };
    assert!(setting("ExecStart").ends_with(" serve"));
    assert!(setting("ExecReload").contains("-HUP $MAINPID"));
    assert_eq!(setting("KillSignal"), "SIGTERM");
    assert_eq!(setting("DynamicUser"), "yes");
    assert_eq!(setting("RestartPreventExitStatus"), "2");
    let stop = Duration::from_secs(setting("TimeoutStopSec").parse().expect("seconds"));
    assert!(
        stop >= defaults.shutdown_grace + SETTLE_FLUSH_MIN,
        "TimeoutStopSec {stop:?} is shorter than the drain"
    );
    let credential = setting("LoadCredential");
    let (name, _) = credential.split_once(':').expect("name:path");
    assert!(
        text.contains(&format!("/run/credentials/quota-proxy.service/{name}")),
        "the unit's comment shows token_file pointing at the credential"
    );
}
