//! A small OCSF validator for the tests: classes and objects compiled from the vendored
//! schema files as the OCSF compiler does, and an event checked against them.
//!
//! Compiling: an item's `$include`d profiles give their attributes (marked with the
//! profile), its own attributes are merged over them, the result over its `extends` parent's
//! (recursively); `constraints` replace the parent's; each attribute is merged over its
//! `dictionary.json` entry; a class gets its own `class_uid`, `category_uid` and `type_uid`
//! enums (category × 1000 + uid, class × 100 + activity). Checking, at every level: each
//! attribute is defined (a profile's only when `metadata.profiles` names it), required
//! ones are there, `at_least_one`/`just_one` hold, values have their dictionary type
//! (string, 32-bit integer, long, boolean, port range, max length, object, array), enum
//! values are in the enum and a sibling name is its caption (but for 99, Other). Not
//! checked: regular expressions of string types, deprecation, observables.
use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Map, Value, json};

/// The vendored schema.
pub struct Schema {
    root: PathBuf,
    dictionary: Map<String, Value>,
    types: Map<String, Value>,
}

/// A compiled class or object: its attributes and constraints.
struct Item {
    name: String,
    attributes: Map<String, Value>,
    constraints: Map<String, Value>,
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// `patch` over `base`: objects merged key by key, anything else replaced.
fn deep_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                deep_merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

impl Schema {
    /// The schema vendored beside this module.
    pub fn vendored() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/audit/export/ocsf-schema");
        let dict = read(&root, "dictionary.json");
        Schema {
            dictionary: obj(&dict["attributes"]),
            types: obj(&dict["types"]["attributes"]),
            root,
        }
    }

    /// The release the vendored files are of.
    pub fn version(&self) -> String {
        read(&self.root, "version.json")["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// What is wrong with `event` (nothing: valid).
    pub fn check(&self, event: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        let profiles: BTreeSet<String> = event["metadata"]["profiles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect();
        for p in &profiles {
            if !self.root.join(format!("profiles/{p}.json")).exists() {
                errors.push(format!("metadata.profiles: no profile {p}"));
            }
        }
        if event["metadata"]["version"] != json!(self.version()) {
            errors.push(format!("metadata.version is not {}", self.version()));
        }
        match self.class_of(event["class_uid"].as_u64()) {
            Some(class) => self.check_object(event, &class, "", &profiles, &mut errors),
            None => errors.push(format!("class_uid {}: no such class", event["class_uid"])),
        }
        errors
    }

    /// The vendored class of uid `uid`.
    fn class_of(&self, uid: Option<u64>) -> Option<Item> {
        let mut paths = vec!["events/base_event.json".to_owned()];
        for dir in std::fs::read_dir(self.root.join("events")).ok()?.flatten() {
            for f in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = f.path();
                paths.push(
                    p.strip_prefix(&self.root)
                        .ok()?
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        paths.into_iter().map(|p| self.class(&p)).find(|c| {
            c.attributes["class_uid"]["enum"]
                .as_object()
                .is_some_and(|e| uid.is_some_and(|u| e.contains_key(&u.to_string())))
        })
    }

    /// The class defined in file `path`, compiled, with its uid enums.
    fn class(&self, path: &str) -> Item {
        let def = read(&self.root, path);
        let mut item = self.compile(&def, &|name| self.class_path(name));
        let categories = read(&self.root, "categories.json");
        let category_name = self.inherited(&def, "category");
        let category = &categories["attributes"][category_name.as_str().unwrap_or("")];
        let cat_uid = category["uid"].as_u64().unwrap_or(0);
        let cat_caption = category["caption"].as_str().unwrap_or("Uncategorized");
        let uid = cat_uid * 1000 + def["uid"].as_u64().unwrap_or(0);
        let caption = def["caption"].as_str().unwrap_or_default();
        let mut types = Map::new();
        for (id, v) in obj(&item.attributes["activity_id"]["enum"]) {
            let t = uid * 100 + id.parse::<u64>().unwrap_or(0);
            types.insert(
                t.to_string(),
                json!({"caption": format!("{caption}: {}", v["caption"].as_str().unwrap_or(""))}),
            );
        }
        types.insert(
            (uid * 100).to_string(),
            json!({"caption": format!("{caption}: Unknown")}),
        );
        let a = &mut item.attributes;
        a["class_uid"]["enum"] = json!({ uid.to_string(): {"caption": caption} });
        a["category_uid"]["enum"] = json!({ cat_uid.to_string(): {"caption": cat_caption} });
        a["type_uid"]["enum"] = Value::Object(types);
        item
    }

    /// Key `key` of class `def` or of the nearest parent that has it.
    fn inherited(&self, def: &Value, key: &str) -> Value {
        match (def.get(key), def["extends"].as_str()) {
            (Some(v), _) => v.clone(),
            (None, Some(parent)) => {
                self.inherited(&read(&self.root, &self.class_path(parent)), key)
            }
            (None, None) => Value::Null,
        }
    }

    /// Where class `name` is defined.
    fn class_path(&self, name: &str) -> String {
        match name {
            "base_event" => "events/base_event.json".into(),
            other => format!("events/application/{other}.json"),
        }
    }

    /// Object `name`, compiled.
    fn object(&self, name: &str) -> Item {
        let def = read(&self.root, &format!("objects/{name}.json"));
        self.compile(&def, &|n| format!("objects/{n}.json"))
    }

    /// `def` with its includes, parents and dictionary entries.
    fn compile(&self, def: &Value, path_of: &dyn Fn(&str) -> String) -> Item {
        let (mut attributes, constraints) = self.compile_raw(def, path_of);
        let name = def["name"].as_str().unwrap_or_default().to_owned();
        for (k, a) in &mut attributes {
            let Some(entry) = self.dictionary.get(k) else {
                panic!("{name}.{k}: not in dictionary.json");
            };
            let mut full = entry.clone();
            deep_merge(&mut full, a);
            *a = full;
        }
        Item {
            name,
            attributes,
            constraints,
        }
    }

    /// Attributes and constraints of `def` with its parents, before the dictionary.
    fn compile_raw(
        &self,
        def: &Value,
        path_of: &dyn Fn(&str) -> String,
    ) -> (Map<String, Value>, Map<String, Value>) {
        let mut attributes = Value::Object(Map::new());
        let mut constraints = obj(&def["constraints"]);
        if let Some(parent) = def["extends"].as_str().filter(|p| *p != "object") {
            let (a, c) = self.compile_raw(&read(&self.root, &path_of(parent)), path_of);
            attributes = Value::Object(a);
            if def.get("constraints").is_none() {
                constraints = c;
            }
        }
        deep_merge(&mut attributes, &Value::Object(self.own_attributes(def)));
        (obj(&attributes), constraints)
    }

    /// `def`'s attributes over those of the profiles it includes.
    fn own_attributes(&self, def: &Value) -> Map<String, Value> {
        let mut merged = Value::Object(Map::new());
        for inc in def["attributes"]["$include"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let p = read(&self.root, inc.as_str().unwrap_or_default());
            for (k, mut a) in obj(&p["attributes"]) {
                a["profile"] = p["name"].clone();
                merged[&k] = a;
            }
        }
        let mut own = obj(&def["attributes"]);
        own.remove("$include");
        deep_merge(&mut merged, &Value::Object(own));
        obj(&merged)
    }

    fn check_object(
        &self,
        v: &Value,
        item: &Item,
        at: &str,
        profiles: &BTreeSet<String>,
        errors: &mut Vec<String>,
    ) {
        let Some(fields) = v.as_object() else {
            return errors.push(format!("{at}: not an object ({})", item.name));
        };
        let applies = |a: &Value| a["profile"].as_str().is_none_or(|p| profiles.contains(p));
        for (k, value) in fields {
            let here = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            match item.attributes.get(k) {
                None => errors.push(format!("{here}: not an attribute of {}", item.name)),
                Some(a) if !applies(a) => errors.push(format!(
                    "{here}: of profile {}, not in metadata.profiles",
                    a["profile"]
                )),
                Some(a) => self.check_attribute(value, a, fields, &here, profiles, errors),
            }
        }
        for (k, a) in &item.attributes {
            if a["requirement"] == "required" && applies(a) && !fields.contains_key(k) {
                errors.push(format!("{at}.{k}: required by {}", item.name));
            }
        }
        let present = |names: &Value| {
            names
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n.as_str().is_some_and(|n| fields.contains_key(n)))
                .count()
        };
        if item
            .constraints
            .get("at_least_one")
            .is_some_and(|n| present(n) == 0)
        {
            errors.push(format!(
                "{at}: {} wants at least one of {}",
                item.name, item.constraints["at_least_one"]
            ));
        }
        if item
            .constraints
            .get("just_one")
            .is_some_and(|n| present(n) != 1)
        {
            errors.push(format!(
                "{at}: {} wants just one of {}",
                item.name, item.constraints["just_one"]
            ));
        }
    }

    fn check_attribute(
        &self,
        v: &Value,
        a: &Value,
        siblings: &Map<String, Value>,
        at: &str,
        profiles: &BTreeSet<String>,
        errors: &mut Vec<String>,
    ) {
        let ty = a["type"].as_str().unwrap_or_default();
        let values: Vec<&Value> = if a["is_array"] == true {
            match v.as_array() {
                Some(items) => items.iter().collect(),
                None => return errors.push(format!("{at}: not an array")),
            }
        } else {
            vec![v]
        };
        for v in values {
            if ty == "object" {
                if !v.is_object() {
                    errors.push(format!("{at}: not an object"));
                }
            } else if ty.ends_with("_t") {
                if let Err(e) = self.check_type(v, ty) {
                    errors.push(format!("{at}: {e}"));
                }
            } else {
                self.check_object(v, &self.object(ty), at, profiles, errors);
            }
            if let Some(e) = a["enum"].as_object() {
                self.check_enum(v, e, a, siblings, at, errors);
            }
        }
    }

    fn check_enum(
        &self,
        v: &Value,
        e: &Map<String, Value>,
        a: &Value,
        siblings: &Map<String, Value>,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let key = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let Some(entry) = e.get(&key) else {
            return errors.push(format!("{at}: {key} is not in its enum"));
        };
        let sibling = a["sibling"]
            .as_str()
            .and_then(|s| siblings.get(s).map(|v| (s, v)));
        if let Some((name, value)) = sibling
            && key != "99"
            && value != &entry["caption"]
        {
            errors.push(format!(
                "{at}: {key} is {}, its {name} says {value}",
                entry["caption"]
            ));
        }
    }

    /// Whether `v` is of dictionary type `ty`.
    fn check_type(&self, v: &Value, ty: &str) -> Result<(), String> {
        let t = self.types.get(ty).ok_or(format!("no type {ty}"))?;
        if let Some(max) = t["max_len"].as_u64()
            && v.as_str().is_some_and(|s| s.len() as u64 > max)
        {
            return Err(format!("longer than {max} for {ty}"));
        }
        if let Some([lo, hi]) = t["range"].as_array().map(Vec::as_slice) {
            let (lo, hi) = (
                lo.as_i64().unwrap_or(i64::MIN),
                hi.as_i64().unwrap_or(i64::MAX),
            );
            if v.as_i64().is_none_or(|n| n < lo || n > hi) {
                return Err(format!("{v} out of the range of {ty}"));
            }
        }
        if let Some(base) = t["type"].as_str() {
            return self.check_type(v, base);
        }
        let ok = match ty {
            "string_t" => v.is_string(),
            "integer_t" => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            "long_t" => v.is_i64(),
            "float_t" => v.is_number(),
            "boolean_t" => v.is_boolean(),
            "json_t" => true,
            _ => return Err(format!("unknown base type {ty}")),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{v} is not a {ty}"))
        }
    }
}

/// File `rel` of the vendored schema, parsed.
fn read(root: &std::path::Path, rel: &str) -> Value {
    let p = root.join(rel);
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (not vendored?)", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
