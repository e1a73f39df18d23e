-- Custom fields per datasheet (projected from FieldSchema events). Their record values live in
-- records.fields under `custom.<key>`.

CREATE TABLE custom_fields (
    datasheet  text        NOT NULL,
    key        text        NOT NULL,
    label      text        NOT NULL,
    kind       text        NOT NULL,
    required   boolean     NOT NULL,
    options    jsonb       NOT NULL DEFAULT '[]',
    retired    boolean     NOT NULL DEFAULT false,
    -- the schema stream's version after the field's last change
    version    bigint      NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (datasheet, key)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON custom_fields TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('custom_fields');
