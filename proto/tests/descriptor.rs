//! The encoded descriptor set: it holds the three services with every rpc (what reflection
//! clients will see), and every element of the serin.v1 files carries a leading comment.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message;
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    ServiceDescriptorProto,
};

// Field numbers used in SourceCodeInfo paths (descriptor.proto).
const FILE_MESSAGE_TYPE: i32 = 4;
const FILE_ENUM_TYPE: i32 = 5;
const FILE_SERVICE: i32 = 6;
const FILE_SYNTAX: i32 = 12;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED_TYPE: i32 = 3;
const MESSAGE_ENUM_TYPE: i32 = 4;
const MESSAGE_ONEOF_DECL: i32 = 8;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(serin_proto::FILE_DESCRIPTOR_SET).expect("descriptor set decodes")
}

fn our_files(set: &FileDescriptorSet) -> Vec<&FileDescriptorProto> {
    let files: Vec<_> = set
        .file
        .iter()
        .filter(|f| f.package() == "serin.v1")
        .collect();
    assert!(!files.is_empty(), "no serin.v1 file in the descriptor set");
    files
}

#[test]
fn services_expose_every_rpc() {
    let set = descriptor_set();
    let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in our_files(&set) {
        for service in &file.service {
            let methods = service.method.iter().map(|m| m.name().to_owned()).collect();
            services.insert(service.name().to_owned(), methods);
        }
    }
    let expected = |names: &[&str]| names.iter().map(|&n| n.to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(
        services,
        BTreeMap::from([
            (
                "Admin".to_owned(),
                expected(&[
                    "ApplyPolicy",
                    "DeletePolicy",
                    "DeregisterWorkload",
                    "Explain",
                    "GetMtlsModes",
                    "GetNamespaceVisibility",
                    "GetPolicy",
                    "ListPolicies",
                    "ListProxies",
                    "ListServices",
                    "PolicyHistory",
                    "Promote",
                    "RegisterWorkload",
                    "RenewLease",
                    "Rollback",
                    "SetMtlsMode",
                    "SetNamespaceVisibility",
                    "SetWeights",
                    "WatchTopology",
                ])
            ),
            ("Discovery".to_owned(), expected(&["Subscribe"])),
            ("Identity".to_owned(), expected(&["SignCertificate"])),
            ("Telemetry".to_owned(), expected(&["Report"])),
        ])
    );
}

#[test]
fn streaming_shapes_are_as_designed() {
    let set = descriptor_set();
    let mut shapes = HashMap::new();
    for file in our_files(&set) {
        for service in &file.service {
            for method in &service.method {
                let key = format!("{}.{}", service.name(), method.name());
                shapes.insert(key, (method.client_streaming(), method.server_streaming()));
            }
        }
    }
    assert_eq!(shapes["Discovery.Subscribe"], (true, true));
    assert_eq!(shapes["Telemetry.Report"], (true, true));
    assert_eq!(shapes["Admin.WatchTopology"], (false, true));
    assert_eq!(shapes["Admin.ApplyPolicy"], (false, false));
}

#[test]
fn imports_are_included_for_reflection() {
    let set = descriptor_set();
    let names: BTreeSet<_> = set.file.iter().map(|f| f.name()).collect();
    for name in [
        "google/protobuf/timestamp.proto",
        "google/protobuf/duration.proto",
        "serin/v1/types.proto",
        "serin/v1/policy.proto",
        "serin/v1/discovery.proto",
        "serin/v1/admin.proto",
        "serin/v1/telemetry.proto",
    ] {
        assert!(
            names.contains(name),
            "{name} missing from the descriptor set: {names:?}"
        );
    }
}

/// Walks every documented element of one file and collects those without a leading comment.
struct CommentCheck<'a> {
    file: &'a str,
    comments: HashMap<Vec<i32>, &'a str>,
    missing: Vec<String>,
}

impl<'a> CommentCheck<'a> {
    fn new(file: &'a FileDescriptorProto) -> Self {
        let info = file
            .source_code_info
            .as_ref()
            .expect("descriptor set keeps source info");
        let comments = info
            .location
            .iter()
            .filter_map(|loc| Some((loc.path.clone(), loc.leading_comments.as_deref()?)))
            .collect();
        Self {
            file: file.name(),
            comments,
            missing: Vec::new(),
        }
    }

    fn require(&mut self, path: &[i32], what: &str) {
        let documented = self
            .comments
            .get(path)
            .is_some_and(|c| !c.trim().is_empty());
        if !documented {
            self.missing.push(format!("{}: {what}", self.file));
        }
    }

    fn message(&mut self, path: &[i32], message: &DescriptorProto, scope: &str) {
        let name = format!("{scope}{}", message.name());
        self.require(path, &format!("message {name}"));
        for (i, field) in message.field.iter().enumerate() {
            let field_path = [path, &[MESSAGE_FIELD, i as i32]].concat();
            self.require(&field_path, &format!("field {name}.{}", field.name()));
        }
        for (i, oneof) in message.oneof_decl.iter().enumerate() {
            // Proto3 `optional` fields get synthetic oneofs named `_field`: not written by hand.
            if oneof.name().starts_with('_') {
                continue;
            }
            let oneof_path = [path, &[MESSAGE_ONEOF_DECL, i as i32]].concat();
            self.require(&oneof_path, &format!("oneof {name}.{}", oneof.name()));
        }
        for (i, nested) in message.nested_type.iter().enumerate() {
            // Map fields generate `FooEntry` messages that have no source of their own.
            if nested.options.as_ref().is_some_and(|o| o.map_entry()) {
                continue;
            }
            let nested_path = [path, &[MESSAGE_NESTED_TYPE, i as i32]].concat();
            self.message(&nested_path, nested, &format!("{name}."));
        }
        for (i, nested) in message.enum_type.iter().enumerate() {
            let nested_path = [path, &[MESSAGE_ENUM_TYPE, i as i32]].concat();
            self.enumeration(&nested_path, nested, &format!("{name}."));
        }
    }

    fn enumeration(&mut self, path: &[i32], enumeration: &EnumDescriptorProto, scope: &str) {
        let name = format!("{scope}{}", enumeration.name());
        self.require(path, &format!("enum {name}"));
        for (i, value) in enumeration.value.iter().enumerate() {
            let value_path = [path, &[ENUM_VALUE, i as i32]].concat();
            self.require(&value_path, &format!("enum value {name}.{}", value.name()));
        }
    }

    fn service(&mut self, path: &[i32], service: &ServiceDescriptorProto) {
        self.require(path, &format!("service {}", service.name()));
        for (i, method) in service.method.iter().enumerate() {
            let method_path = [path, &[SERVICE_METHOD, i as i32]].concat();
            self.require(
                &method_path,
                &format!("rpc {}.{}", service.name(), method.name()),
            );
        }
    }
}

#[test]
fn every_element_has_a_leading_comment() {
    let set = descriptor_set();
    let mut missing = Vec::new();
    let mut checked_files = 0;
    for file in our_files(&set) {
        let mut check = CommentCheck::new(file);
        for (i, message) in file.message_type.iter().enumerate() {
            check.message(&[FILE_MESSAGE_TYPE, i as i32], message, "");
        }
        for (i, enumeration) in file.enum_type.iter().enumerate() {
            check.enumeration(&[FILE_ENUM_TYPE, i as i32], enumeration, "");
        }
        for (i, service) in file.service.iter().enumerate() {
            check.service(&[FILE_SERVICE, i as i32], service);
        }
        missing.append(&mut check.missing);
        checked_files += 1;
    }
    assert_eq!(checked_files, 6, "expected the six serin.v1 files");
    assert!(
        missing.is_empty(),
        "elements without a leading comment:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_file_opens_with_a_doc_comment() {
    let set = descriptor_set();
    for file in our_files(&set) {
        let info = file.source_code_info.as_ref().expect("source info");
        let header = info
            .location
            .iter()
            .find(|loc| loc.path == [FILE_SYNTAX])
            .map(|loc| {
                let mut text = loc.leading_detached_comments.join("\n");
                text.push_str(loc.leading_comments());
                text
            })
            .unwrap_or_default();
        assert!(
            header.trim().lines().count() >= 2,
            "{} must open with a comment that explains it",
            file.name()
        );
    }
}

#[test]
fn reflection_accepts_the_descriptor_set() {
    // tonic-reflection resolves every file against its imports when it builds the service, so
    // this proves the set is complete enough for a control plane to serve reflection from it.
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(serin_proto::FILE_DESCRIPTOR_SET)
        .with_service_name("serin.v1.Discovery")
        .with_service_name("serin.v1.Admin")
        .with_service_name("serin.v1.Telemetry")
        .build_v1()
        .expect("reflection service builds from FILE_DESCRIPTOR_SET");
}
