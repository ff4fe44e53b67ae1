//! The instance names a server answers to, and what each one serves. Requests name an instance; an
//! unknown name or a service the instance does not offer is the client's error, told plainly.

use std::collections::HashMap;
use std::sync::Arc;

use strata_backends::ActionCacheStore;
use tonic::Status;

use crate::assets::Assets;
use crate::auth::Access;
use crate::cas::Cas;
use crate::metrics::Metrics;
use crate::quote::quote;

pub struct Instance {
    pub name: String,
    pub cas: Option<Cas>,
    /// The action cache, with the CAS its entries' outputs are checked against.
    pub action_cache: Option<(Arc<dyn ActionCacheStore>, Cas)>,
    /// The storage that execution reads actions from and caches results in, when the instance
    /// serves execution (whether or not it also serves the CAS to clients).
    pub execution: Option<(Arc<dyn ActionCacheStore>, Cas)>,
    /// The Remote Asset API's index, when the instance serves it.
    pub assets: Option<Assets>,
    /// The storage stack, tier by tier, for status and the admin API (None for embedded stores).
    pub storage: Option<Arc<crate::storage::Storage>>,
}

impl Instance {
    /// The services it offers, as the configuration names them.
    pub fn service_names(&self) -> Vec<&'static str> {
        let offered = [
            (self.cas.is_some(), "cas"),
            (self.action_cache.is_some(), "action_cache"),
            (self.execution.is_some(), "execution"),
            (self.assets.is_some(), "asset"),
        ];
        offered.into_iter().filter(|(on, _)| *on).map(|(_, name)| name).collect()
    }
}

pub struct Instances {
    by_name: HashMap<String, Arc<Instance>>,
    /// The largest batch request accepted, as advertised in the capabilities.
    pub max_batch_total_size: u64,
    /// Where the services count their cache lookups.
    pub metrics: Arc<Metrics>,
}

impl Instances {
    pub fn new(instances: Vec<Instance>, max_batch_total_size: u64, metrics: Arc<Metrics>) -> Self {
        let by_name = instances.into_iter().map(|i| (i.name.clone(), Arc::new(i))).collect();
        Instances { by_name, max_batch_total_size, metrics }
    }

    /// Every instance, by name.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Instance>> {
        let mut all: Vec<&Arc<Instance>> = self.by_name.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.into_iter()
    }

    pub fn get(&self, name: &str) -> Result<&Arc<Instance>, Status> {
        self.by_name.get(name).ok_or_else(|| {
            let mut known: Vec<String> = self.by_name.keys().map(|k| format!("{k:?}")).collect();
            known.sort();
            Status::invalid_argument(format!(
                "unknown instance name {}; this server serves {}",
                quote(name),
                known.join(", ")
            ))
        })
    }

    /// The instance `access` may use for its call. The permission first: a caller without it
    /// does not learn which instances exist.
    fn for_call(&self, access: &Access, name: &str) -> Result<&Arc<Instance>, Status> {
        access.check(name)?;
        self.get(name)
    }

    pub fn cas(&self, access: &Access, name: &str) -> Result<&Cas, Status> {
        self.for_call(access, name)?
            .cas
            .as_ref()
            .ok_or_else(|| Status::unimplemented(format!("instance {} does not serve the CAS", quote(name))))
    }

    pub fn action_cache(&self, access: &Access, name: &str) -> Result<&(Arc<dyn ActionCacheStore>, Cas), Status> {
        self.for_call(access, name)?
            .action_cache
            .as_ref()
            .ok_or_else(|| Status::unimplemented(format!("instance {} does not serve the action cache", quote(name))))
    }

    pub fn assets(&self, access: &Access, name: &str) -> Result<&Assets, Status> {
        self.for_call(access, name)?
            .assets
            .as_ref()
            .ok_or_else(|| Status::unimplemented(format!("instance {} does not serve the Remote Asset API", quote(name))))
    }

    pub fn execution(&self, access: &Access, name: &str) -> Result<&(Arc<dyn ActionCacheStore>, Cas), Status> {
        self.for_call(access, name)?
            .execution
            .as_ref()
            .ok_or_else(|| Status::unimplemented(format!("instance {} does not serve execution", quote(name))))
    }

    /// The action caches that execution writes results to, by instance name.
    pub fn action_caches(&self) -> HashMap<String, Arc<dyn ActionCacheStore>> {
        self.by_name.iter().filter_map(|(name, i)| Some((name.clone(), i.execution.as_ref()?.0.clone()))).collect()
    }

    pub fn any_serves(&self, pick: impl Fn(&Instance) -> bool) -> bool {
        self.by_name.values().any(|i| pick(i))
    }
}
