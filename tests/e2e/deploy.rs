//! The deployment files in deploy/: the Kubernetes manifests and docker-compose.yml
//! parsed and checked for what an operator relies on, the gateway configs they carry
//! validated by the real config compiler, the Dockerfile's shape, and the systemd unit
//! checked by `systemd-analyze verify` (Debian's systemd, installed by scripts/test.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use fluxgate_host::plan::{self, Overrides};
use serde::Deserialize;
use serde_yaml::Value;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of every manifest in deploy/kubernetes, by kind and name.
fn manifests() -> Vec<Value> {
    let mut docs = Vec::new();
    let dir = deploy().join("kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        for doc in serde_yaml::Deserializer::from_str(&read(&file)) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn s(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

fn valid_gateway_config(text: &str, what: &str) -> plan::Plan {
    plan::parse(text, &Overrides::default())
        .unwrap_or_else(|e| panic!("{what} is not a valid gateway.toml: {e:?}"))
}

#[test]
fn kubernetes_manifests_have_probes_resources_gossip_dns_config_plugins_and_a_budget() {
    let docs = manifests();
    let deployment = find(&docs, "Deployment", "fluxgate");
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    let labels = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(
        &deployment["spec"]["template"]["metadata"]["labels"],
        labels
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container[probe]["httpGet"]["path"], "/api/v1/health",
            "{probe}"
        );
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }
    for key in ["requests", "limits"] {
        let resources = &container["resources"][key];
        assert!(resources["cpu"].as_str().is_some(), "{key}.cpu");
        assert!(resources["memory"].as_str().is_some(), "{key}.memory");
    }
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let ports: Vec<(&str, u64)> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_u64().unwrap()))
        .collect();
    assert!(ports.contains(&("http", 8080)), "{ports:?}");
    assert!(ports.contains(&("gossip-udp", 7946)), "{ports:?}");

    // The config comes from the ConfigMap, the plugins from a volume, at the paths the
    // config names; the gateway.toml in the ConfigMap is valid.
    let configmap = find(&docs, "ConfigMap", "fluxgate-config");
    let gateway_toml = s(&configmap["data"]["gateway.toml"]);
    let plan = valid_gateway_config(gateway_toml, "the ConfigMap's gateway.toml");
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let volumes = pod["volumes"].as_sequence().unwrap();
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };
    let volume = |name: &Value| volumes.iter().find(|v| &v["name"] == name).unwrap();
    let config_mount = mount_of("/etc/fluxgate/gateway.toml");
    assert_eq!(
        volume(&config_mount["name"])["configMap"]["name"],
        "fluxgate-config"
    );
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--config", "/etc/fluxgate/gateway.toml"]),
        "{args:?}"
    );
    let plugin_dir = plan.config.plugins.dir.to_str().unwrap().to_owned();
    let plugin_mount = mount_of(&plugin_dir);
    let claim = s(&volume(&plugin_mount["name"])["persistentVolumeClaim"]["claimName"]);
    find(&docs, "PersistentVolumeClaim", claim);

    // Pods join each other through the headless Service's DNS name.
    let gossip = find(&docs, "Service", "fluxgate-gossip");
    assert_eq!(gossip["spec"]["clusterIP"], "None", "headless");
    assert_eq!(gossip["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(&gossip["spec"]["selector"], labels);
    let namespace = s(&deployment["metadata"]["namespace"]);
    let cluster = plan.cluster.expect("[cluster] is on");
    assert_eq!(
        cluster.join,
        vec![format!(
            "fluxgate-gossip.{namespace}.svc.cluster.local:7946"
        )]
    );
    assert!(
        args.iter().any(|a| a.contains("$(POD_IP)")),
        "advertise the pod's address"
    );
    let service = find(&docs, "Service", "fluxgate");
    assert_eq!(&service["spec"]["selector"], labels);

    let pdb = find(&docs, "PodDisruptionBudget", "fluxgate");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert!(
        pdb["spec"]["maxUnavailable"].as_u64().is_some()
            || pdb["spec"]["minAvailable"].as_u64().is_some()
    );

    // The grace period outlasts the gateway's own drain.
    let grace_s = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace_s * 1000 > plan.config.server.shutdown_grace_ms);
    // Everything listed in the kustomization exists.
    let kustomization: Value =
        serde_yaml::from_str(&read(&deploy().join("kubernetes/kustomization.yaml"))).unwrap();
    for resource in kustomization["resources"].as_sequence().unwrap() {
        assert!(
            deploy().join("kubernetes").join(s(resource)).exists(),
            "{resource:?}"
        );
    }
}

#[test]
fn docker_compose_runs_the_gateway_and_two_services_that_register_themselves() {
    let mut compose: Value =
        serde_yaml::from_str(&read(&deploy().join("docker-compose.yml"))).unwrap();
    // The services share an `x-service` anchor through `<<:` merge keys, as Compose does.
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let gateway = &compose["services"]["gateway"];
    assert_eq!(gateway["build"]["dockerfile"], "deploy/Dockerfile");
    assert!(
        gateway["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| s(p).ends_with(":8080"))
    );
    let others: Vec<&Value> = services
        .iter()
        .filter(|(name, _)| *name != "gateway")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(others.len(), 2, "two example services");
    for service in others {
        let env = &service["environment"];
        assert_eq!(env["GATEWAY_URL"], "http://gateway:8080");
        assert!(env["SERVICE_NAME"].as_str().is_some());
        assert_eq!(
            service["depends_on"]["gateway"]["condition"],
            "service_healthy"
        );
        let command: Vec<&str> = service["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(s)
            .collect();
        assert_eq!(command, ["python", "/app/service.py"]);
        let mount = s(&service["volumes"][0]);
        let source = mount.split(':').next().unwrap();
        let script = read(&deploy().join(source));
        assert!(script.contains("/api/v1/services/register") && script.contains("heartbeat"));
    }
    valid_gateway_config(
        &read(&deploy().join("compose/gateway.toml")),
        "compose/gateway.toml",
    );
    // The example service is valid Python (when python3 is here).
    if let Ok(status) = Command::new("python3")
        .args(["-m", "py_compile"])
        .arg(deploy().join("examples/service.py"))
        .env(
            "PYTHONPYCACHEPREFIX",
            std::env::temp_dir().join("fluxgate-pycache"),
        )
        .status()
    {
        assert!(status.success(), "examples/service.py does not compile");
    }
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_and_health_checked() {
    let text = read(&deploy().join("Dockerfile"));
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage");
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "runs as {user}"
    );
    let healthcheck = text
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .take(2)
        .collect::<String>();
    assert!(healthcheck.contains("/api/v1/health"), "{healthcheck}");
    assert!(text.contains("COPY --from=build"));
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let path = deploy().join("systemd/fluxgate.service");
    let text = read(&path);
    let value = |key: &str| -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .collect()
    };
    assert_eq!(value("DynamicUser"), ["yes"]);
    assert_eq!(value("ProtectSystem"), ["strict"]);
    assert_eq!(value("CapabilityBoundingSet"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(value("AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(value("NoNewPrivileges"), ["yes"]);
    assert!(
        value("ExecReload")[0].contains(" upgrade "),
        "ExecReload upgrades the binary"
    );
    let analyze = which("systemd-analyze")
        .expect("systemd-analyze is not installed (scripts/test.sh installs Debian's systemd)");
    // Verified as installed, with the binary path pointing at the one just built (the
    // verifier checks that the commands exist).
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("fluxgate.service");
    std::fs::write(
        &unit,
        text.replace(
            "/usr/local/bin/fluxgate-host",
            env!("CARGO_BIN_EXE_fluxgate-host"),
        ),
    )
    .unwrap();
    let output = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed: {said}"
    );
    // It also reports unknown or bad values only as warnings: none may appear.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("fluxgate.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify warned: {said}");
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}
