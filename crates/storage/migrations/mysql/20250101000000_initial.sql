-- History for the scale-out mode (groups and members live in Redis).
-- utf8mb4_bin makes group ids compare case-sensitively by code point; MEDIUMTEXT
-- holds 16384 characters of up to 4 bytes each, which TEXT (64 KiB) cannot.
-- The primary key (group, millis, seq) orders a group's messages by id, serves
-- every read, and makes INSERT IGNORE skip a message that is already stored.
CREATE TABLE IF NOT EXISTS messages (
    group_id     VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    id_millis    BIGINT UNSIGNED NOT NULL,
    id_seq       BIGINT UNSIGNED NOT NULL,
    author_id    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    send_time_ms BIGINT NOT NULL,
    text         MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    PRIMARY KEY (group_id, id_millis, id_seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
