#!/bin/bash
# Every 2 s, the sum of each skmem field (ss -tm) over the TCP sockets in bench/http's
# namespaces (bfh-*-srv and bfh-*-cli), one line per namespace: w is what the server has
# queued to send, r what the client has received and not yet read, tb and rb the buffers'
# limits. Run beside a bench run; stop it by PID.
while :; do
  for ns in $(ip netns list | awk '/^bfh-.*-(srv|cli)/{print $1}'); do
    ip netns exec $ns ss -tmn 2>/dev/null | awk -v ns=${ns##*-} '/skmem/ { s=$0; gsub(/.*skmem:\(|\).*/,"",s); n=split(s,f,","); for(i=1;i<=n;i++){k=f[i]; gsub(/[0-9]+/,"",k); v=f[i]; gsub(/[^0-9]/,"",v); t[k]+=v}; c++ } END { printf "%s %s socks=%d", strftime("%T"), ns, c; for (k in t) printf " %s=%.0fMiB", k, t[k]/1048576; printf "\n" }'
  done
  sleep 2
done
