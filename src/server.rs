//! Assembling a front: the one plan `serve`, `exec` and `doctor` share for the executor
//! processes that will run their guests.
//!
//! Owns how profiles map to executor groups and what each executor is told at start. Does not
//! own the command lines (see [`crate::cli`]), the request path ([`crate::service`]) or the
//! processes themselves ([`crate::service::executors`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::home::Home;
use crate::metrics::Metrics;
use crate::policy::HardeningMode;
use crate::runtime::Language;
use crate::service::Profiles;
use crate::service::executors::{Executors, GroupKey, Launcher, Settings};
use crate::spawner::SpawnerPlan;
use crate::tools::ToolRegistry;

/// The executors a set of profiles needs.
#[derive(Clone, Debug)]
pub struct ExecutorPlan {
    pub settings: Settings,
    /// One group per distinct set of mounts among the profiles, in a stable order.
    pub groups: Vec<GroupKey>,
}

impl ExecutorPlan {
    /// Executors for `profiles`, loading `languages`, serving the packages under `tools`,
    /// confined with `hardening`, `per_group` of them for each group.
    pub fn new(
        home: &Home,
        profiles: &Profiles,
        languages: Vec<Language>,
        tools: &[PathBuf],
        hardening: HardeningMode,
        per_group: usize,
    ) -> Self {
        let mut groups: Vec<GroupKey> = profiles.by_name.values().map(|p| GroupKey::of(&p.policy)).collect();
        groups.sort();
        groups.dedup();
        // Each running execution may hold a nested code-mode tool guest besides its own (the
        // nested one runs under the parent's slot), and a spent guest of the execution before it
        // still being released after its report went out (`on_guest_thread_releasing`); each
        // session holds a live interpreter. Any one executor may end up with all of them while
        // its siblings are being replaced.
        let instances: u32 =
            profiles.by_name.values().map(|p| 3 * p.policy.file.limits.concurrent_executions + p.policy.file.sessions.max).sum();
        let settings = Settings {
            home: home.root().to_path_buf(),
            tools: tools.to_vec(),
            languages,
            max_instances: instances + 4,
            hardening,
            per_group: per_group.max(1),
            guest_pool: crate::executor::pool::DEFAULT_PER_KEY,
        };
        ExecutorPlan { settings, groups }
    }

    /// What the spawner must keep reachable for the executors it starts (they inherit its
    /// Landlock domain and can only narrow it): runtimes, tool packages and every group's
    /// mounts; the workspaces; `/proc` (an executor verifies its own threads, and its pid is not
    /// known in advance). The module cache is writable here: an executor compiles a tool it
    /// finds no entry for into the cache before it confines itself, and its own domain then has
    /// the cache read-only.
    pub fn spawner_plan(&self, home: &Home, workspaces: &Path) -> SpawnerPlan {
        let mut read_only = vec![PathBuf::from("/proc"), home.runtimes()];
        read_only.extend(self.settings.tools.iter().filter_map(|t| t.canonicalize().ok()));
        let mut read_write = vec![workspaces.to_path_buf(), home.cache()];
        for g in &self.groups {
            read_only.extend(g.read_only.iter().cloned());
            read_write.extend(g.read_write.iter().cloned());
        }
        for v in [&mut read_only, &mut read_write] {
            v.sort();
            v.dedup();
        }
        SpawnerPlan { read_only, read_write }
    }

    /// Keeps `n` guests of each kind prepared ahead in every executor (0: none).
    pub fn with_guest_pool(mut self, n: usize) -> Self {
        self.settings.guest_pool = n;
        self
    }

    /// How many executor processes the plan starts.
    pub fn processes(&self) -> usize {
        self.groups.len() * self.settings.per_group
    }

    /// Starts the executors under `workspaces` and keeps, of the front's `tools`, those the
    /// executors loaded with the same digest.
    pub async fn start(self, launcher: Arc<dyn Launcher>, workspaces: PathBuf, tools: &mut ToolRegistry) -> Result<Arc<Executors>, String> {
        let executors = Executors::start(launcher, self.settings, workspaces, self.groups, Arc::new(Metrics::new())).await?;
        if let Some(first) = executors.any_ready() {
            tools.keep_loaded(&first.ready.tools, &first.ready.refused);
        }
        Ok(executors)
    }
}

/// One executor per core by default.
pub fn default_per_group() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
