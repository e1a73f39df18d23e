-- Every instance of the service keeps some of a tenant's rows in memory between requests: live
-- sessions with their users' grants, subject keys, custom field schemas. A change to those rows
-- is announced on the channel `custos_cache` (the payload names what changed) so that every
-- instance drops its copy as soon as the change commits, whoever made it: a request on this
-- instance, the projector of another, or an operator at a psql prompt.
--
-- Statement-level triggers: one announcement per statement, never one per row (PostgreSQL also
-- folds identical announcements of one transaction into one). Only what a cached copy depends
-- on is watched: a session's last use and new sessions or keys are not announced.
CREATE FUNCTION custos_announce_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('custos_cache', TG_ARGV[0]);
    RETURN NULL;
END
$$;

CREATE TRIGGER sessions_announce_revocation
    AFTER UPDATE OF revoked_at, expires_at OR DELETE OR TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION custos_announce_change('sessions');

CREATE TRIGGER users_announce_change
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION custos_announce_change('sessions');

CREATE TRIGGER roles_announce_change
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON roles
    FOR EACH STATEMENT EXECUTE FUNCTION custos_announce_change('sessions');

CREATE TRIGGER role_grants_announce_change
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON role_grants
    FOR EACH STATEMENT EXECUTE FUNCTION custos_announce_change('sessions');

CREATE TRIGGER organization_settings_announce_change
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON organization_settings
    FOR EACH STATEMENT EXECUTE FUNCTION custos_announce_change('sessions');

CREATE TRIGGER subject_keys_announce_erasure
    AFTER UPDATE OR DELETE OR TRUNCATE ON subject_keys
    FOR EACH STATEMENT EXECUTE FUNCTION custos_announce_change('subject_keys');

CREATE TRIGGER custom_fields_announce_change
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON custom_fields
    FOR EACH STATEMENT EXECUTE FUNCTION custos_announce_change('field_schemas');
