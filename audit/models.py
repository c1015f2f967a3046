# The AuditEvent table arrives with the audit issue (DESIGN §3).
