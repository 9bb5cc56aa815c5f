"""The audit log: every admin action, and a user's own changes to what an operator could also set
(their spend limits), who did it, when, what and why (`record_admin_action`)."""
