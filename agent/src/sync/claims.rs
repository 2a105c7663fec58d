//! Which sync of this agent declares which object, as of each sync's last good render, so
//! that two syncs declaring one object are stopped at render, with both named, before
//! either writes (instead of being found later by their owner labels, or by fighting).
//!
//! The object goes to the sync that declares it with the adopt annotation (a hand-over),
//! else stays with the sync that has it on record (its inventory); between equals, with
//! the one that declared it first. The losing revision fails to render, so its last good
//! revision stays applied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::core::{self, ObjectKey};
use crate::render;

/// How strong a sync's claim on an object is, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Declared,
    /// In the sync's inventory.
    Recorded,
    /// Declared with the adopt annotation.
    Adopting,
}

#[derive(Debug)]
struct Holder {
    sync: Arc<str>,
    rank: Rank,
}

/// The declarations of every sync of one agent.
#[derive(Debug, Default)]
pub struct Claims {
    held: Mutex<HashMap<ObjectKey, Holder>>,
}

impl Claims {
    /// Records what `sync`'s revision declares, unless another sync holds some of it:
    /// then nothing is recorded (the sync's last good declaration stands) and each such
    /// object is an error at its file and line naming the other sync. `recorded` says
    /// whether an object is in `sync`'s inventory.
    pub fn declare(
        &self,
        sync: &str,
        manifests: &[render::Manifest],
        recorded: impl Fn(&ObjectKey) -> bool,
    ) -> Result<(), render::Errors> {
        let ranks: Vec<Rank> = manifests
            .iter()
            .map(|m| match (core::adopts(&m.object), recorded(&m.id)) {
                (true, _) => Rank::Adopting,
                (false, true) => Rank::Recorded,
                (false, false) => Rank::Declared,
            })
            .collect();
        let mut held = self.held.lock().expect("claims lock");
        let errors: Vec<render::Located> = manifests
            .iter()
            .zip(&ranks)
            .filter_map(|(m, rank)| {
                let holder = held.get(&m.id)?;
                let keeps = &*holder.sync != sync && holder.rank >= *rank;
                keeps.then(|| conflict(m, &holder.sync))
            })
            .collect();
        if !errors.is_empty() {
            return Err(render::Errors(errors));
        }
        held.retain(|_, h| &*h.sync != sync);
        let name: Arc<str> = Arc::from(sync);
        for (m, rank) in manifests.iter().zip(ranks) {
            let holder = Holder {
                sync: name.clone(),
                rank,
            };
            held.insert(m.id.clone(), holder);
        }
        Ok(())
    }

    /// Drops the declarations of a sync that left the configuration.
    pub fn forget(&self, sync: &str) {
        self.held
            .lock()
            .expect("claims lock")
            .retain(|_, h| &*h.sync != sync);
    }
}

fn conflict(m: &render::Manifest, other: &str) -> render::Located {
    render::Located {
        file: m.file.clone(),
        line: m.line,
        column: None,
        subject: Some(m.subject()),
        item: None,
        error: render::Error::DeclaredByOtherSync {
            sync: other.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, file: &str, line: usize) -> render::Manifest {
        render::Manifest {
            id: ObjectKey {
                group: String::new(),
                kind: "ConfigMap".into(),
                namespace: Some("shop".into()),
                name: name.into(),
                version: "v1".into(),
            },
            file: file.into(),
            line,
            object: serde_json::value::to_raw_value(&serde_json::json!({}))
                .unwrap()
                .into(),
        }
    }

    #[test]
    fn an_object_declared_by_two_syncs_fails_the_second_naming_both() {
        let claims = Claims::default();
        let a = [
            manifest("one", "a/x.yaml", 1),
            manifest("two", "a/x.yaml", 9),
        ];
        claims.declare("a", &a, |_| false).unwrap();
        // Again, unchanged or changed: a sync never conflicts with itself.
        claims.declare("a", &a, |_| true).unwrap();

        let b = [
            manifest("two", "b/y.yaml", 4),
            manifest("three", "b/y.yaml", 12),
        ];
        let err = claims.declare("b", &b, |_| false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "b/y.yaml:4: ConfigMap/shop/two: also declared by sync \"a\"; \
             one object belongs to one sync: remove it from one of them"
        );
        // Nothing of b's was recorded: its own objects do not block a third sync.
        claims
            .declare("c", &[manifest("three", "c/z.yaml", 1)], |_| false)
            .unwrap();

        // Once a drops the object, b may declare it.
        claims.declare("a", &a[..1], |_| true).unwrap();
        let b = [manifest("two", "b/y.yaml", 4)];
        claims.declare("b", &b, |_| false).unwrap();
        // And a, which pruned it, may not take it back.
        assert!(claims.declare("a", &a, |k| k.name == "one").is_err());
    }

    #[test]
    fn the_sync_with_the_object_on_record_keeps_it_whoever_renders_first() {
        let claims = Claims::default();
        // After a restart the newcomer b renders first; a has the object in its inventory.
        claims
            .declare("b", &[manifest("web", "b.yaml", 1)], |_| false)
            .unwrap();
        claims
            .declare("a", &[manifest("web", "a.yaml", 1)], |_| true)
            .unwrap();
        let err = claims
            .declare("b", &[manifest("web", "b.yaml", 1)], |_| false)
            .unwrap_err();
        assert!(err.to_string().contains("sync \"a\""), "{err}");

        // Git hands it over with the adopt annotation: b takes it, and a is refused now.
        let mut adopting = manifest("web", "b.yaml", 1);
        adopting.object = serde_json::value::to_raw_value(&serde_json::json!({
            "metadata": {"annotations": {core::ADOPT_ANNOTATION: "true"}}
        }))
        .unwrap()
        .into();
        claims.declare("b", &[adopting], |_| false).unwrap();
        let err = claims
            .declare("a", &[manifest("web", "a.yaml", 1)], |_| true)
            .unwrap_err();
        assert!(err.to_string().contains("sync \"b\""), "{err}");

        claims.forget("b");
        claims
            .declare("a", &[manifest("web", "a.yaml", 1)], |_| true)
            .unwrap();
        claims.forget("a");
        claims
            .declare("b", &[manifest("web", "b.yaml", 1)], |_| false)
            .unwrap();
    }
}
