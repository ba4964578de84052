# At delivery (LDA/LMTP, sieve_before): the spam milter flagged it.
require ["fileinto", "mailbox"];

if header :is "X-Spam" "Yes" {
  fileinto :create "Junk";
  stop;
}
