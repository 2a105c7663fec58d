//! Health of live objects, one assessment per kind (after Argo CD and kstatus), and the
//! sync's health as the worst of them.
