//! What an API user may do: OpenHIM 8.5's permissions (with their exact names), the three built-in
//! roles that grant them, and the check every protected endpoint makes ([`require`]).
//!
//! A user's `groups` are its role names. Unknown names grant nothing; a user with no known role is
//! refused (403, "does not have an access role specified") everywhere but `GET /me` and
//! `GET /logout`. A permission passes when any of the user's roles grants it, or grants the
//! `manage` permission of which it is the `view` (OpenHIM's rule: `channel-manage-all` lets a user
//! read channels too).
//!
//! The roles are built in and cannot be changed: `GET /roles` lists them, and custom roles
//! (OpenHIM's `POST|PUT|DELETE /roles`) are not supported. OpenHIM's `*-specified` permissions
//! (lists of channel, client or mediator ids) exist as names only; no built-in role grants them.
//!
//! | role | permissions |
//! |---|---|
//! | `admin` | every boolean permission (as OpenHIM's default `admin` role) |
//! | `manager` | as OpenHIM's default `manager`: everything but `user-manage`, `user-role-manage`, `auth-type-view-all`, `events-view-all`, `metadata-view-all`, `metadata-manage-all`, `service-manage` |
//! | `operator` | `channel-view-all`, `transaction-view-all`, `transaction-view-body-all`, `transaction-rerun-all` |
//!
//! Which endpoint wants which permission (Mediary's endpoints; where OpenHIM has none, the nearest):
//!
//! | endpoint | permission |
//! |---|---|
//! | `GET /heartbeat`, `GET /health/*`, `POST /authenticate/local`, `GET /logout` | none (public) |
//! | `GET /me` | any authenticated user |
//! | `GET /channels`, `GET /channels/:id` | `channel-view-all` |
//! | `POST /channels`, `PUT`/`DELETE /channels/:id` | `channel-manage-all` |
//! | `GET /transactions`, `GET /transactions/:id` | `transaction-view-all`; bodies only with `transaction-view-body-all` |
//! | `POST /transactions/:id/rerun` | `transaction-rerun-all` |
//! | `GET /plugins`, `GET /plugins/:name` | `mediator-view-all` (plugins stand where OpenHIM's mediators do) |
//! | `POST`/`DELETE /plugins/:name`, `POST /plugins/:name/rollback` | `mediator-manage-all` |
//! | `GET /metrics`, `GET /cluster` | `channel-view-all` (per-channel figures; which configuration each instance runs) |
//! | `GET /users` | `user-view` |
//! | `GET /users/:email` | `user-view`, or the user itself |
//! | `POST /users`, `DELETE /users/:email` | `user-manage` |
//! | `PUT /users/:email` | `user-manage`, or the user itself (but not its own `groups`) |
//! | `GET /roles`, `GET /roles/:name` | `user-role-view` |
//! | `GET /clients…` / `POST`, `PUT`, `DELETE /clients…` | `client-view-all` / `client-manage-all` |

use serde_json::{Map, Value, json};

use super::error::ApiError;

/// Declares [`Permission`] from one table (variant and OpenHIM's name, in OpenHIM's order), so the
/// enum, [`Permission::ALL`] and [`Permission::name`] cannot disagree.
macro_rules! permissions {
    ($($variant:ident => $name:literal,)*) => {
        /// One of OpenHIM 8.5's role permissions (`src/model/role.js`), named as there.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Permission {
            $($variant,)*
        }

        impl Permission {
            /// Every permission, in OpenHIM's order.
            pub const ALL: [Permission; [$(Permission::$variant),*].len()] =
                [$(Permission::$variant),*];

            /// OpenHIM's name for it.
            pub fn name(self) -> &'static str {
                match self {
                    $(Permission::$variant => $name,)*
                }
            }
        }
    };
}

permissions! {
    ChannelViewAll => "channel-view-all",
    ChannelViewSpecified => "channel-view-specified",
    ChannelManageAll => "channel-manage-all",
    ChannelManageSpecified => "channel-manage-specified",
    ClientViewAll => "client-view-all",
    ClientViewSpecified => "client-view-specified",
    ClientManageAll => "client-manage-all",
    ClientManageSpecified => "client-manage-specified",
    ClientRoleViewAll => "client-role-view-all",
    ClientRoleViewSpecified => "client-role-view-specified",
    ClientRoleManageAll => "client-role-manage-all",
    ClientRoleManageSpecified => "client-role-manage-specified",
    TransactionViewAll => "transaction-view-all",
    TransactionViewSpecified => "transaction-view-specified",
    TransactionViewBodyAll => "transaction-view-body-all",
    TransactionViewBodySpecified => "transaction-view-body-specified",
    TransactionRerunAll => "transaction-rerun-all",
    TransactionRerunSpecified => "transaction-rerun-specified",
    UserView => "user-view",
    UserManage => "user-manage",
    UserRoleView => "user-role-view",
    UserRoleManage => "user-role-manage",
    AuditTrailView => "audit-trail-view",
    AuditTrailManage => "audit-trail-manage",
    ContactListView => "contact-list-view",
    ContactListManage => "contact-list-manage",
    MediatorViewAll => "mediator-view-all",
    MediatorViewSpecified => "mediator-view-specified",
    MediatorManageAll => "mediator-manage-all",
    MediatorManageSpecified => "mediator-manage-specified",
    CertificatesView => "certificates-view",
    CertificatesManage => "certificates-manage",
    LogsView => "logs-view",
    ImportExport => "import-export",
    AppViewAll => "app-view-all",
    AppViewSpecified => "app-view-specified",
    AppManageAll => "app-manage-all",
    AppManageSpecified => "app-manage-specified",
    AuthTypeViewAll => "auth-type-view-all",
    EventsViewAll => "events-view-all",
    MetadataViewAll => "metadata-view-all",
    MetadataManageAll => "metadata-manage-all",
    ServiceManage => "service-manage",
    VisualizerManage => "visualizer-manage",
    VisualizerView => "visualizer-view",
}

impl Permission {
    /// The permission named `name` (OpenHIM's spelling), if any.
    pub fn parse(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == name)
    }

    /// OpenHIM's `*-specified` permissions hold lists of resource ids rather than a yes or no.
    pub fn is_specified(self) -> bool {
        self.name().ends_with("-specified")
    }

    /// The `manage` permission that implies this `view` one.
    pub fn manage(self) -> Option<Permission> {
        use Permission::*;
        Some(match self {
            ChannelViewAll => ChannelManageAll,
            ChannelViewSpecified => ChannelManageSpecified,
            ClientViewAll => ClientManageAll,
            ClientViewSpecified => ClientManageSpecified,
            ClientRoleViewAll => ClientRoleManageAll,
            ClientRoleViewSpecified => ClientRoleManageSpecified,
            UserView => UserManage,
            UserRoleView => UserRoleManage,
            AuditTrailView => AuditTrailManage,
            ContactListView => ContactListManage,
            MediatorViewAll => MediatorManageAll,
            MediatorViewSpecified => MediatorManageSpecified,
            CertificatesView => CertificatesManage,
            AppViewAll => AppManageAll,
            AppViewSpecified => AppManageSpecified,
            MetadataViewAll => MetadataManageAll,
            VisualizerView => VisualizerManage,
            _ => return None,
        })
    }

    fn bit(self) -> u64 {
        1 << (self as u32)
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A built-in role, as OpenHIM creates them at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Manager,
    Operator,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Manager, Role::Operator];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::Operator => "operator",
        }
    }

    /// The role named `name` (exactly: OpenHIM's names are lower case).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether the role itself grants `permission` (without the manage-implies-view rule).
    pub fn grants(self, permission: Permission) -> bool {
        use Permission::*;
        if permission.is_specified() {
            return false;
        }
        match self {
            Role::Admin => true,
            Role::Manager => !matches!(
                permission,
                UserManage
                    | UserRoleManage
                    | AuthTypeViewAll
                    | EventsViewAll
                    | MetadataViewAll
                    | MetadataManageAll
                    | ServiceManage
            ),
            Role::Operator => matches!(
                permission,
                ChannelViewAll | TransactionViewAll | TransactionViewBodyAll | TransactionRerunAll
            ),
        }
    }

    /// The role as OpenHIM's role document: `{name, permissions: {<name>: bool | [ids]}}`.
    pub fn to_json(self) -> Value {
        let permissions: Map<String, Value> = Permission::ALL
            .into_iter()
            .map(|p| {
                let value = if p.is_specified() {
                    json!([])
                } else {
                    json!(self.grants(p))
                };
                (p.name().to_owned(), value)
            })
            .collect();
        json!({"name": self.name(), "permissions": permissions})
    }
}

/// The built-in roles a user has; what its `groups` name, unknown names left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    roles: [bool; Role::ALL.len()],
    /// Every permission granted, directly or as the view of a granted manage.
    granted: u64,
}

impl Roles {
    /// The roles among `groups` (a user document's field; anything but an array of strings holds
    /// none).
    pub fn from_groups(groups: Option<&Value>) -> Roles {
        let names = groups
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str);
        Roles::from_names(names)
    }

    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Roles {
        let mut roles = Roles::default();
        for role in names.into_iter().filter_map(Role::parse) {
            roles.roles[role as usize] = true;
        }
        for permission in Permission::ALL {
            let direct = |p: Permission| roles.roles().any(|role| role.grants(p));
            if direct(permission) || permission.manage().is_some_and(direct) {
                roles.granted |= permission.bit();
            }
        }
        roles
    }

    pub fn roles(&self) -> impl Iterator<Item = Role> + '_ {
        Role::ALL.into_iter().filter(|r| self.roles[*r as usize])
    }

    pub fn is_empty(&self) -> bool {
        !self.roles.iter().any(|r| *r)
    }

    /// Whether these roles grant `permission`.
    pub fn grants(&self, permission: Permission) -> bool {
        self.granted & permission.bit() != 0
    }
}

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `Authorization: Basic`, on this request.
    Basic,
    /// A session cookie from `POST /authenticate/local`.
    Session,
}

/// An authenticated API user: who, with which roles, and how it proved it.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user's id: its email, lowercased.
    pub email: String,
    pub roles: Roles,
    pub via: Via,
}

impl Principal {
    /// Whether the user may do what `permission` covers.
    pub fn can(&self, permission: Permission) -> bool {
        self.roles.grants(permission)
    }

    /// Ok when the user has a known role, else 403 as OpenHIM says it.
    pub fn require_role(&self) -> Result<(), ApiError> {
        if self.roles.is_empty() {
            return Err(ApiError::Forbidden {
                reason: format!(
                    "The user `{}` does not have an access role specified: its groups name none \
                     of admin, manager, operator.",
                    self.email
                ),
                permission: None,
            });
        }
        Ok(())
    }

    /// Ok when the user may do what `permission` covers, else 403 naming the permission.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        self.require_role()?;
        if self.can(permission) {
            return Ok(());
        }
        let roles: Vec<&str> = self.roles.roles().map(Role::name).collect();
        Err(ApiError::Forbidden {
            reason: format!(
                "The user `{}` may not do this: it needs the permission `{permission}`, which its \
                 roles ({}) do not grant.",
                self.email,
                roles.join(", ")
            ),
            permission: Some(permission),
        })
    }

    /// Ok when the user has a role and is `email` itself or has `permission`.
    pub fn require_self_or(&self, email: &str, permission: Permission) -> Result<(), ApiError> {
        self.require_role()?;
        if self.email == email.to_lowercase() {
            return Ok(());
        }
        self.require(permission)
    }
}

/// `user.require(permission)`, for endpoints to wire in one line each:
/// `roles::require(user, Permission::ClientManageAll)?;`.
pub fn require(user: &Principal, permission: Permission) -> Result<(), ApiError> {
    user.require(permission)
}

/// `GET /roles`: the built-in roles, as OpenHIM's role documents.
pub fn list() -> Value {
    Value::Array(Role::ALL.into_iter().map(Role::to_json).collect())
}

/// `GET /roles/:name`: one built-in role.
pub fn get(name: &str) -> Result<Value, ApiError> {
    Role::parse(name).map(Role::to_json).ok_or_else(|| {
        ApiError::NotFound(format!(
            "No role is named `{name}`; the roles are admin, manager and operator."
        ))
    })
}

/// Checks a `groups` value of a user document: an array of known role names. Each problem is
/// pushed with its field (`groups`, `groups[1]`).
pub fn check_groups(value: &Value, errors: &mut crate::config::fields::FieldErrors) {
    let Some(items) = value.as_array() else {
        errors.push("groups", "must be an array of role names");
        return;
    };
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(name) if Role::parse(name).is_some() => {}
            Some(name) => errors.push(
                format!("groups[{i}]"),
                format!("`{name}` is not a role; the roles are admin, manager and operator"),
            ),
            None => errors.push(format!("groups[{i}]"), "must be a role name (a string)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(groups: &[&str]) -> Principal {
        Principal {
            email: "u@example.org".into(),
            roles: Roles::from_names(groups.iter().copied()),
            via: Via::Basic,
        }
    }

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut names: Vec<&str> = Permission::ALL.iter().map(|p| p.name()).collect();
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.name()), Some(p));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Permission::ALL.len());
        assert!(Permission::ALL.len() < 64, "permissions fit the bit set");
        assert_eq!(Permission::parse("channel-view"), None);
        assert_eq!(Role::parse("Admin"), None);
    }

    #[test]
    fn the_built_in_roles_grant_what_openhims_do() {
        let admin = Roles::from_names(["admin"]);
        let manager = Roles::from_names(["manager"]);
        let operator = Roles::from_names(["operator"]);
        for p in Permission::ALL.into_iter().filter(|p| !p.is_specified()) {
            assert!(admin.grants(p), "admin: {p}");
        }
        for p in [Permission::UserManage, Permission::UserRoleManage] {
            assert!(!manager.grants(p), "manager: {p}");
        }
        for p in [
            Permission::UserView,
            Permission::UserRoleView,
            Permission::ChannelManageAll,
            Permission::ClientManageAll,
            Permission::MediatorManageAll,
            Permission::TransactionViewBodyAll,
        ] {
            assert!(manager.grants(p), "manager: {p}");
        }
        let granted: Vec<Permission> = Permission::ALL
            .into_iter()
            .filter(|p| operator.grants(*p))
            .collect();
        assert_eq!(
            granted,
            [
                Permission::ChannelViewAll,
                Permission::TransactionViewAll,
                Permission::TransactionViewBodyAll,
                Permission::TransactionRerunAll,
            ]
        );
        // Nothing grants the id lists.
        assert!(!admin.grants(Permission::ChannelViewSpecified));
    }

    #[test]
    fn manage_implies_view() {
        for p in Permission::ALL {
            if let Some(manage) = p.manage() {
                assert!(p.name().contains("-view"), "{p}");
                assert_eq!(manage.name(), p.name().replace("-view", "-manage"));
            }
        }
        // No built-in role has a manage without its view, so the rule is checked on its own.
        let mut roles = Roles::default();
        roles.roles[Role::Operator as usize] = true;
        assert!(roles.roles().eq([Role::Operator]));
        let only_manage = Roles {
            granted: 0,
            ..roles
        };
        assert!(!only_manage.grants(Permission::ChannelViewAll));
        assert_eq!(
            Permission::TransactionViewBodyAll.manage(),
            None,
            "body access has no manage variant"
        );
        assert_eq!(
            Permission::ClientViewAll.manage(),
            Some(Permission::ClientManageAll)
        );
    }

    #[test]
    fn groups_hold_roles_and_unknown_names_grant_nothing() {
        let groups = json!(["operator", "auditors", 7]);
        let roles = Roles::from_groups(Some(&groups));
        assert!(roles.roles().eq([Role::Operator]));
        assert!(Roles::from_groups(Some(&json!(["nobody"]))).is_empty());
        assert!(Roles::from_groups(Some(&json!("admin"))).is_empty());
        assert!(Roles::from_groups(None).is_empty());
        let both = Roles::from_names(["operator", "manager"]);
        assert!(both.grants(Permission::UserView));
    }

    #[test]
    fn require_names_the_missing_permission() {
        let operator = principal(&["operator"]);
        assert!(operator.require(Permission::TransactionRerunAll).is_ok());
        let error = operator.require(Permission::ChannelManageAll).unwrap_err();
        assert_eq!(error.status(), http::StatusCode::FORBIDDEN);
        assert!(
            error.to_string().contains("`channel-manage-all`"),
            "{error}"
        );
        assert!(error.to_string().contains("(operator)"), "{error}");

        let nobody = principal(&["auditors"]);
        let error = nobody.require(Permission::ChannelViewAll).unwrap_err();
        assert_eq!(error.status(), http::StatusCode::FORBIDDEN);
        assert!(
            error
                .to_string()
                .contains("does not have an access role specified"),
            "{error}"
        );
        // Not even for its own document.
        assert!(
            nobody
                .require_self_or("u@example.org", Permission::UserView)
                .is_err()
        );
        assert!(
            operator
                .require_self_or("U@Example.org", Permission::UserView)
                .is_ok()
        );
        assert!(
            operator
                .require_self_or("other@example.org", Permission::UserView)
                .is_err()
        );
    }

    #[test]
    fn role_documents_have_openhims_shape() {
        let operator = Role::Operator.to_json();
        assert_eq!(operator["name"], "operator");
        assert_eq!(operator["permissions"]["transaction-rerun-all"], true);
        assert_eq!(operator["permissions"]["user-view"], false);
        assert_eq!(operator["permissions"]["channel-view-specified"], json!([]));
        assert_eq!(list().as_array().unwrap().len(), 3);
        assert_eq!(get("manager").unwrap()["permissions"]["user-manage"], false);
        assert_eq!(
            get("root").unwrap_err().status(),
            http::StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn groups_are_checked_against_the_roles() {
        let mut errors = crate::config::fields::FieldErrors::default();
        check_groups(&json!(["admin", "boss", 3]), &mut errors);
        check_groups(&json!("admin"), &mut errors);
        let found: Vec<(String, String)> =
            errors.0.into_iter().map(|e| (e.path, e.reason)).collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].0, "groups[1]");
        assert!(found[0].1.contains("`boss` is not a role"));
        assert_eq!(found[1].0, "groups[2]");
        assert_eq!(found[2].0, "groups");
    }
}
