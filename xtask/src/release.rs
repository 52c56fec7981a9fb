//! `cargo xtask release`: every gate a release must pass, then packaging.

use anyhow::{Result, bail};

use crate::{cargo, project_root, run_checked};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Stop after packaging: no upload, no tag.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// Publishable crates, in dependency order.
pub(crate) const CRATES: [&str; 5] =
    ["shears-core", "shears-strategies", "shears-sparse", "shears-nn", "shears-cli"];

/// Package fields every publishable crate must set (directly or from the workspace).
const REQUIRED: [&str; 5] = ["description", "license", "repository", "readme", "keywords"];

pub(crate) fn run(args: &Args) -> Result<()> {
    let root = project_root();
    run_checked(ci_script(), "the CI gates (.ci/run)")?;
    let version = workspace_version(&std::fs::read_to_string(root.join("Cargo.toml"))?)?;
    for krate in CRATES {
        let manifest = std::fs::read_to_string(root.join("crates").join(krate).join("Cargo.toml"))?;
        check_metadata(krate, &manifest)?;
    }
    let changelog = std::fs::read_to_string(root.join("CHANGELOG.md")).unwrap_or_default();
    if !changelog.contains(&format!("## {version}")) {
        bail!("CHANGELOG.md has no `## {version}` entry");
    }
    let mut package = cargo();
    package.args([
        "package",
        "--workspace",
        "--locked",
        "--allow-dirty",
        "--exclude",
        "xtask",
        "--exclude",
        "shears-benches",
    ]);
    run_checked(package, "cargo package (every publishable crate, in dependency order)")?;
    if args.dry_run {
        println!("release {version}: every gate passed; --dry-run stops before publishing");
        return Ok(());
    }
    for krate in CRATES {
        let mut publish = cargo();
        publish.args(["publish", "--locked", "-p", krate]);
        run_checked(publish, &format!("cargo publish -p {krate}"))?;
    }
    let mut tag = std::process::Command::new("git");
    tag.current_dir(&root).args(["tag", &format!("v{version}")]);
    run_checked(tag, &format!("git tag v{version}"))
}

fn ci_script() -> std::process::Command {
    let mut cmd = std::process::Command::new("bash");
    cmd.current_dir(project_root()).arg(".ci/run");
    cmd
}

/// The `version` of `[workspace.package]`.
pub(crate) fn workspace_version(manifest: &str) -> Result<String> {
    let section = manifest.split("[workspace.package]").nth(1).unwrap_or("");
    for line in section.lines().take_while(|l| !l.starts_with('[')) {
        if let Some(v) = line.strip_prefix("version = ") {
            return Ok(v.trim().trim_matches('"').to_owned());
        }
    }
    bail!("no version in [workspace.package]")
}

/// Every required field is present, and the version is the workspace's.
pub(crate) fn check_metadata(krate: &str, manifest: &str) -> Result<()> {
    for field in REQUIRED {
        let set = manifest.lines().any(|l| {
            l.starts_with(&format!("{field} ="))
                || l.starts_with(&format!("{field}.workspace = true"))
        });
        if !set {
            bail!("{krate}: package field `{field}` is missing");
        }
    }
    if !manifest.contains("version.workspace = true") {
        bail!("{krate}: the version must come from the workspace (version.workspace = true)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_checks() {
        let good = "description = \"x\"\nlicense.workspace = true\nrepository.workspace = true\nreadme = \"r\"\nkeywords = []\nversion.workspace = true\n";
        assert!(check_metadata("c", good).is_ok());
        assert!(
            check_metadata("c", &good.replace("keywords = []\n", ""))
                .unwrap_err()
                .to_string()
                .contains("keywords")
        );
        assert!(
            check_metadata("c", &good.replace("version.workspace = true", "version = \"9\""))
                .is_err()
        );
        assert_eq!(
            workspace_version("[workspace.package]\nversion = \"1.2.3\"\n").unwrap(),
            "1.2.3"
        );
        assert!(workspace_version("[package]\n").is_err());
    }

    #[test]
    fn the_real_manifests_pass() {
        let root = project_root();
        for krate in CRATES {
            let manifest =
                std::fs::read_to_string(root.join("crates").join(krate).join("Cargo.toml"))
                    .unwrap();
            check_metadata(krate, &manifest).unwrap();
        }
        let version =
            workspace_version(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
        assert!(
            std::fs::read_to_string(root.join("CHANGELOG.md"))
                .unwrap()
                .contains(&format!("## {version}"))
        );
    }
}
