# IMAPSieve: a message left Junk. Into Trash means "delete this spam", not
# "this is ham": nothing is learned then. A copy from Junk into Junk is
# not ham either (and the spam script already runs for it: two pipes to
# one program in one transaction are refused).
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.mailbox" "*" {
  set "mailbox" "${1}";
}

if string :is "${mailbox}" ["Junk", "Trash", "Deleted Items", "Deleted Messages"] {
  stop;
}

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

pipe :copy "postwarden-learn" [ "ham", "${username}" ];
